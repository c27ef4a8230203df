//! TCP and UDP echo (RFC 862).

use std::net::SocketAddr;

use crate::net::{Buffer, Ctx, DatagramHandler, DatagramOut, Handler};

/// Sends back every byte it receives. When the peer reads slower than it writes, the echoed
/// bytes pile up in our output queue; past the high-water mark we stop reading, so the kernel's
/// receive window pushes back on the sender instead of our memory growing without bound.
#[derive(Default)]
pub struct Echo {
    paused: bool,
    /// Simulated blocking work per read (`--work-ms`): a handler that sleeps, as one that
    /// waits on a disk or a database would, to show what each concurrency model does with it.
    work: Option<std::time::Duration>,
}

impl Echo {
    pub fn with_work(work: Option<std::time::Duration>) -> Echo {
        Echo {
            paused: false,
            work,
        }
    }
}

impl Handler for Echo {
    fn on_data(&mut self, cx: &mut Ctx<'_>, input: &mut Buffer) {
        if let Some(work) = self.work {
            std::thread::sleep(work);
        }
        cx.write(input.as_slice());
        input.clear();
    }

    fn on_high_water(&mut self, cx: &mut Ctx<'_>, _queued: usize) {
        self.paused = true;
        cx.pause_read();
    }

    fn on_drained(&mut self, cx: &mut Ctx<'_>) {
        if self.paused {
            self.paused = false;
            cx.resume_read();
        }
    }
}

/// Answers each datagram with itself.
pub struct UdpEcho;

impl DatagramHandler for UdpEcho {
    fn on_datagram(&mut self, out: &mut DatagramOut<'_>, data: &[u8], from: SocketAddr) {
        // A full socket buffer drops the reply, as UDP may.
        let _ = out.send_to(data, from);
    }
}
