//! Blocks between nodes, verified on both sides: the fetch client and the block server
//! apart, and the small cache of blocks served lately.
//!
//! Every block is checked against its BLAKE3: a fetcher never writes one that does not
//! match, and a server never sends one it has not checked or trusted by its stamp.

pub mod fetch;
pub mod serve;
pub mod served;
