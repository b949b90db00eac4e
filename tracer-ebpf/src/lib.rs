//! Empty library target: it lets `tracer` name this crate as a build-dependency so cargo
//! rebuilds the eBPF object when it changes (see aya-build).
#![no_std]
