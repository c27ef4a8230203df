//! Process control the safe crates leave out: fork and friends (filled in by the process models).
