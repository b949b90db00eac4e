static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));
fn main() { let e = aya::Ebpf::load(OBJ); println!("{}", e.is_ok()); }
