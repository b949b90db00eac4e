//! Reading a live process without stopping it: its memory ([`memory`], [`mapped`]), CPython's
//! objects by version ([`cpython`]) and what vLLM calls things by release ([`vllm`]). Knows
//! nothing of tracing; imports only [`crate::text`].

pub mod cpython;
pub mod mapped;
pub mod memory;
pub mod vllm;
