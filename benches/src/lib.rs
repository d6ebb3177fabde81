//! Benchmarks live in `benches/benches/` (criterion micro benchmarks of the hot
//! path); the side-by-side load harness against nginx, HAProxy and Caddy joins
//! them in the benchmark issue.
