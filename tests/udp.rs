//! `keel echo` also echoes UDP datagrams on the same port as its TCP listener.

mod util;

use std::net::UdpSocket;
use std::time::Duration;

use util::{per_engine, random_bytes, Opts};

fn udp_echo(engine: &str) {
    let srv = Opts::echo(engine).spawn();
    let udp = srv.udp_addr().unwrap_or_else(|| {
        panic!(
            "[{engine}] no `listening udp ADDR` line; stdout: {:?}",
            srv.stdout_lines()
        )
    });
    assert_eq!(
        udp, srv.tcp,
        "[{engine}] UDP echo should be on the TCP address"
    );
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 65536];
    for (i, &size) in [1usize, 64, 512, 1400].iter().enumerate() {
        let msg = random_bytes(0x0D + i as u64, size);
        // Loopback does not drop datagrams in practice; still, allow a few tries.
        let mut echoed = None;
        for _ in 0..3 {
            sock.send_to(&msg, udp).expect("send_to");
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    echoed = Some((buf[..n].to_vec(), from));
                    break;
                }
                Err(e) if util::is_timeout(&e) => continue,
                Err(e) => panic!("[{engine}] recv_from: {e}"),
            }
        }
        let (got, from) = echoed.unwrap_or_else(|| {
            panic!("[{engine}] no UDP echo of a {size}-byte datagram in 3 tries")
        });
        assert_eq!(from, udp, "[{engine}] echo came from another address");
        assert!(
            got == msg,
            "[{engine}] UDP echo of {size} bytes came back as {} bytes (equal: {})",
            got.len(),
            got == msg
        );
    }
    // TCP still works next to it.
    util::assert_serves(&srv, "UDP echo");
}
per_engine!(udp_echo);
