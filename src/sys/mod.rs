//! Raw system calls the safe crates do not wrap. Nearly every `unsafe` block of keel lives
//! here, each with a `// SAFETY:` comment.

pub mod process;
pub mod select_poll;
pub mod tcp;
pub mod uring;
