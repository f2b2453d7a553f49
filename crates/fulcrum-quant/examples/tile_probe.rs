use fulcrum_quant::{dot_tile, quantize_row, row_bytes, vec_dot, vec_dot_type, GgmlType, Order};
use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rows = args.first().copied().unwrap_or(262144);
    let cols = args.get(1).copied().unwrap_or(640);
    let tokens = args.get(2).copied().unwrap_or(1);
    for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
        let rb = row_bytes(ty, cols);
        let mut s = 1u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut w = vec![0u8; rows * rb];
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            for v in row.iter_mut() {
                *v = next();
            }
            quantize_row(ty, &row, &mut w[r * rb..(r + 1) * rb]);
        }
        let at = vec_dot_type(ty);
        let ab = row_bytes(at, cols);
        let mut a = vec![0u8; ab * tokens];
        for t in 0..tokens {
            for v in row.iter_mut() {
                *v = next();
            }
            quantize_row(at, &row, &mut a[t * ab..(t + 1) * ab]);
        }
        let mut out = vec![0f32; rows * tokens];
        for _ in 0..3 {
            let t0 = Instant::now();
            for t in 0..tokens {
                for r in 0..rows {
                    out[t * rows + r] = vec_dot(ty, cols, &w[r * rb..], &a[t * ab..]);
                }
            }
            let single = t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            let mut tile = [0f32; 16 * 64];
            for r0 in (0..rows).step_by(16) {
                for tt in (0..tokens).step_by(64) {
                    let nt = 64.min(tokens - tt);
                    dot_tile(
                        ty,
                        cols,
                        &w[r0 * rb..(r0 + 16) * rb],
                        16,
                        &a[tt * ab..],
                        nt,
                        Order::Plain,
                        &mut tile,
                        16,
                    );
                    for t in 0..nt {
                        out[(tt + t) * rows + r0..(tt + t) * rows + r0 + 16]
                            .copy_from_slice(&tile[t * 16..t * 16 + 16]);
                    }
                }
            }
            let tiled = t0.elapsed().as_secs_f64();
            let gb = (rows * rb) as f64 / 1e9;
            println!("{ty:?} {rows}x{cols} tokens {tokens}: single {:.2} ms ({:.1} GB/s)  tile {:.2} ms ({:.1} GB/s)", single * 1e3, gb / single, tiled * 1e3, gb / tiled);
        }
    }
}
