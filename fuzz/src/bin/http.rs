//! AFL++ entry point for the `http` target (the checks are in src/targets.rs).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        hark_fuzz::targets::http(data);
    });
}
