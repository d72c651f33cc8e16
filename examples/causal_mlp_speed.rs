//! How fast can a lean causal MLP predict, per pixel, on one core? (issue 11's next model)
//!
//! `scripts/lab/causal_predictors.py` finds that a 39-input MLP (frame t's causal 5x5, frame
//! t-1's 3x3, the 8/16-frame means' 3x3; hidden 32 and 16; 1776 multiply-adds per pixel) reaches
//! within 2% of the causal genie's entropy on ctc. This measures what such a network costs as an
//! integer stage in the quantiser's walk: int16 inputs and weights, exact i32 sums, ReLU and a
//! floor shift, pixel after pixel in raster order (each pixel's inputs include the left
//! neighbours just reconstructed, so the pixels are sequential), random weights. It prints MB/s
//! per core for u8 frames next to the issue's 5 MB/s and to a plain copy of the same gathers
//! (the network's cost without its arithmetic).
//!
//! ```sh
//! cargo run --release --example causal_mlp_speed -- [WIDTH] [FRAMES]
//! ```

use std::time::Instant;

const INPUTS: usize = 39;
const H1: usize = 32;
const H2: usize = 16;

struct Net {
    w1: Vec<[i16; INPUTS]>,
    /// `w1` by input: the column of every hidden unit's weight of input k (the same network,
    /// laid out for a sum over the hidden units in vector lanes).
    w1t: Vec<[i32; H1]>,
    b1: [i32; H1],
    w2: Vec<[i16; H1]>,
    b2: [i32; H2],
    w3: [i16; H2],
}

fn rng(seed: &mut u64) -> i64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*seed >> 33) as i64
}

impl Net {
    fn random(seed: &mut u64) -> Net {
        let mut w = || (rng(seed) % 255 - 127) as i16;
        let w1: Vec<[i16; INPUTS]> = (0..H1).map(|_| std::array::from_fn(|_| w())).collect();
        let w1t = (0..INPUTS).map(|k| std::array::from_fn(|o| w1[o][k] as i32)).collect();
        Net {
            w1,
            w1t,
            b1: std::array::from_fn(|_| 0),
            w2: (0..H2).map(|_| std::array::from_fn(|_| w())).collect(),
            b2: std::array::from_fn(|_| 0),
            w3: std::array::from_fn(|_| w()),
        }
    }

    /// The correction in 1/64 units of the input differences.
    #[inline(always)]
    fn run(&self, x: &[i16; INPUTS]) -> i32 {
        let mut h1 = [0i16; H1];
        for (o, (w, b)) in h1.iter_mut().zip(self.w1.iter().zip(&self.b1)) {
            let s: i32 = w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum::<i32>() + b;
            *o = (s >> 10).clamp(0, 127) as i16;
        }
        let mut h2 = [0i16; H2];
        for (o, (w, b)) in h2.iter_mut().zip(self.w2.iter().zip(&self.b2)) {
            let s: i32 = w.iter().zip(&h1).map(|(&a, &b)| a as i32 * b as i32).sum::<i32>() + b;
            *o = (s >> 10).clamp(0, 127) as i16;
        }
        self.w3.iter().zip(&h2).map(|(&a, &b)| a as i32 * b as i32).sum::<i32>() >> 6
    }

    /// [`Net::run`] with the first layer summed input by input over all hidden units at once.
    #[inline(always)]
    fn run_by_columns(&self, x: &[i16; INPUTS]) -> i32 {
        let mut acc = self.b1;
        for (col, &v) in self.w1t.iter().zip(x) {
            let v = v as i32;
            for (a, &c) in acc.iter_mut().zip(col) {
                *a += c * v;
            }
        }
        let h1: [i16; H1] = std::array::from_fn(|o| (acc[o] >> 10).clamp(0, 127) as i16);
        let mut h2 = [0i16; H2];
        for (o, (w, b)) in h2.iter_mut().zip(self.w2.iter().zip(&self.b2)) {
            let s: i32 = w.iter().zip(&h1).map(|(&a, &b)| a as i32 * b as i32).sum::<i32>() + b;
            *o = (s >> 10).clamp(0, 127) as i16;
        }
        self.w3.iter().zip(&h2).map(|(&a, &b)| a as i32 * b as i32).sum::<i32>() >> 6
    }
}

/// The 39 inputs of pixel `i` (interior), relative to the previous frame's pixel.
#[inline(always)]
fn gather(cur: &[u8], prev: &[u8], means: &[&[u8]; 2], i: usize, w: usize) -> [i16; INPUTS] {
    let base = prev[i] as i16;
    let mut x = [0i16; INPUTS];
    let mut k = 0;
    for dy in [-2isize, -1] {
        for dx in -2isize..=2 {
            x[k] = cur[(i as isize + dy * w as isize + dx) as usize] as i16 - base;
            k += 1;
        }
    }
    for dx in [-2isize, -1] {
        x[k] = cur[(i as isize + dx) as usize] as i16 - base;
        k += 1;
    }
    for img in [prev, means[0], means[1]] {
        for dy in -1isize..=1 {
            for dx in -1isize..=1 {
                x[k] = img[(i as isize + dy * w as isize + dx) as usize] as i16 - base;
                k += 1;
            }
        }
    }
    x
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let w: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(511);
    let frames: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let n = w * w;
    let mut seed = 7u64;
    let net = Net::random(&mut seed);
    let frame = |seed: &mut u64| -> Vec<u8> { (0..n).map(|_| (rng(seed) & 255) as u8).collect() };
    let (prev, m8, m16, truth) = (frame(&mut seed), frame(&mut seed), frame(&mut seed), frame(&mut seed));
    let means = [&m8[..], &m16[..]];

    // Sequential walk: each pixel's prediction, then its "reconstruction" (here the truth
    // nudged by the prediction, so the work cannot be hoisted out of the loop).
    let walk = |how: u8| -> (f64, u64) {
        let mut cur = truth.clone();
        let mut check = 0u64;
        let t0 = Instant::now();
        for _ in 0..frames {
            for y in 2..w - 1 {
                for x in 2..w - 2 {
                    let i = y * w + x;
                    let inputs = gather(&cur, &prev, &means, i, w);
                    let c = match how {
                        0 => inputs.iter().map(|&v| v as i32).sum::<i32>(),
                        1 => net.run(&inputs),
                        _ => net.run_by_columns(&inputs),
                    };
                    let p = (prev[i] as i32 + c).clamp(0, 255);
                    cur[i] = ((truth[i] as i32 + p) / 2) as u8;
                    check = check.wrapping_add(p as u64);
                }
            }
        }
        (t0.elapsed().as_secs_f64(), check)
    };
    let (t_copy, c0) = walk(0);
    let (t_net, c1) = walk(1);
    let (t_cols, c2) = walk(2);
    assert_eq!(c1, c2, "the two layouts compute the same network");
    let mb = (frames * n) as f64 / 1e6;
    println!(
        "lean causal MLP ({INPUTS}-{H1}-{H2}-1, {} multiply-adds per pixel), {w}x{w} u8, {frames} frames, one core, sequential raster walk",
        INPUTS * H1 + H1 * H2 + H2
    );
    println!("gathers only (the baseline)      {:8.2} MB/s   {:6.1} ns/pixel", mb / t_copy, t_copy * 1e9 / (frames * n) as f64);
    println!(
        "gathers + integer MLP            {:8.2} MB/s   {:6.1} ns/pixel   (issue 11's target for the model: 5 MB/s per core)",
        mb / t_net,
        t_net * 1e9 / (frames * n) as f64
    );
    println!("gathers + integer MLP, by columns {:8.2} MB/s   {:6.1} ns/pixel", mb / t_cols, t_cols * 1e9 / (frames * n) as f64);
    println!("(checksums {c0} {c1} {c2})");
}
