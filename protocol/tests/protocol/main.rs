//! chat-protocol's integration test binary: the PROTOCOL.md vectors and the allocation bound.
#![allow(unsafe_code)] // the counting allocator in `alloc_bound`
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers on fixtures

mod alloc_bound;
mod vectors;
