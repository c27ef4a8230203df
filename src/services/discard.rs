//! Discard (RFC 863): reads and drops. The loop's `bytes_in` counter is the byte count.

use crate::net::{Buffer, Ctx, Handler};

#[derive(Default)]
pub struct Discard;

impl Handler for Discard {
    fn on_data(&mut self, _cx: &mut Ctx<'_>, input: &mut Buffer) {
        input.clear();
    }
}
