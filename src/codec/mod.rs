//! Codecs that cut a byte stream into messages (rule 8 of the notes: TCP keeps no message
//! boundaries, so the application draws them). A decoder is handed whatever bytes have
//! arrived and says either "here is a whole message, this many bytes long" or "not yet":
//! needing more bytes is never an error, a header that breaks the format always is.

pub mod frame;
