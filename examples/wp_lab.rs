//! Lab (issue 14, item 1): a self-correcting weighted predictor in the manner of JPEG-XL's
//! modular mode, as a spatial predictor, against `none` and MED, each coded by the adaptive stage.
//! Measured 2026-12-04 (5 frames after the first, intra only): particles-u16 none 7.628, MED
//! 5.838, weighted 6.029; ctc-fluo-nuclei 2.753 / 2.532 / 2.585; scratch-hoechst-u16 2.114 /
//! 2.037 / 2.060: the weighted predictor beats MED by 1-3%, and coding the values themselves
//! (whose neighbours then measure the intensity) beats both.
//! With temporal sub-predictors mixed in (2026-12-06, session 19; particles-u16 seed 4, frames
//! 1-5): the previous frame 5.983, its 3x3 mean 5.997, previous + 3x3 + 5x5 means 6.069, the 5x5
//! mean alone 5.323, against `none` 7.628: on sparse spots over a Poisson background no mix of
//! predictors comes near coding the counts themselves (the lever there is the coder's
//! conditioning on the intensity: `docs/results/issue14-particles-lab.txt`).
//! `cargo run --release --example wp_lab DIR...` (raw frames + meta.json)
use tezipfs::codec::entropy::{Coder, Side, Stage};
use tezipfs::fixtures::{read_raw_dir, RawDir};

fn zz(r: i64) -> u32 {
    if r >= 0 {
        (2 * r) as u32
    } else {
        (-2 * r - 1) as u32
    }
}

/// Weighted prediction of every pixel (values scaled by 8 inside), residual codes out.
fn wp_codes(img: &[u32], w: usize, h: usize, temporal: &[&[u32]]) -> Vec<u32> {
    let n = w * h;
    let np = 4 + temporal.len();
    let mut err = vec![vec![0i64; n]; np];
    let mut te = vec![0i64; n];
    let mut out = Vec::with_capacity(n);
    let px = |x: isize, y: isize| -> i64 {
        if y < 0 && x < 0 {
            return 0;
        }
        let (xx, yy) = (x.clamp(0, w as isize - 1) as usize, y.max(0) as usize);
        if y < 0 {
            return (img[xx] as i64) << 3;
        }
        (img[yy * w + xx] as i64) << 3
    };
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            let (nn_, ww, ne) = if y == 0 {
                let l = if x > 0 { px(x - 1, 0) } else { 0 };
                (l, l, l)
            } else {
                let n_ = px(x, y - 1);
                let w_ = if x > 0 { px(x - 1, y) } else { n_ };
                let ne = if (x as usize) + 1 < w { px(x + 1, y - 1) } else { n_ };
                (n_, w_, ne)
            };
            let at = |xx: isize, yy: isize, a: &Vec<i64>| -> i64 {
                if xx < 0 || yy < 0 || xx >= w as isize {
                    0
                } else {
                    a[yy as usize * w + xx as usize]
                }
            };
            let (te_w, te_n, te_nw, te_ne) = (at(x - 1, y, &te), at(x, y - 1, &te), at(x - 1, y - 1, &te), at(x + 1, y - 1, &te));
            let mut p = vec![
                ww + ne - nn_,
                nn_ - (((te_w + te_n + te_ne) * 16) >> 5),
                ww - (((te_w + te_n + te_nw) * 10) >> 5),
                nn_ - ((te_nw * 7 + te_n * 7 + te_ne * 7) >> 5),
            ];
            for t in temporal {
                p.push((t[i] as i64) << 3);
            }
            let wts = [13i64, 12, 12, 12, 12, 12, 12, 12];
            let mut sum_w = 0i64;
            let mut sum_p = 0i64;
            for k in 0..np {
                let e = at(x, y - 1, &err[k]) + at(x - 1, y, &err[k]) + at(x - 1, y - 1, &err[k]) + at(x + 1, y - 1, &err[k]) + at(x - 2, y, &err[k]);
                let wt = (wts[k] << 16) / (e + 1);
                sum_w += wt;
                sum_p += wt * p[k];
            }
            let mut pred = if sum_w > 0 { (sum_p + sum_w / 2) / sum_w } else { p[0] };
            let lo = ww.min(nn_).min(ne);
            let hi = ww.max(nn_).max(ne);
            if temporal.is_empty() {
                pred = pred.clamp(lo, hi);
            }
            let actual = (img[i] as i64) << 3;
            let pv = (pred + 4) >> 3;
            out.push(zz(img[i] as i64 - pv));
            te[i] = pred - actual;
            for k in 0..np {
                err[k][i] = ((p[k] - actual).abs() + 3) >> 3;
            }
        }
    }
    out
}

/// The mean of `img` over a (2r+1)^2 box (edges clamped), rounded.
fn box_mean(img: &[u32], w: usize, h: usize, r: isize) -> Vec<u32> {
    let mut out = vec![0u32; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let (mut s, mut c) = (0u64, 0u64);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (xx, yy) = (x + dx, y + dy);
                    if xx >= 0 && yy >= 0 && xx < w as isize && yy < h as isize {
                        s += img[yy as usize * w + xx as usize] as u64;
                        c += 1;
                    }
                }
            }
            out[y as usize * w + x as usize] = ((s + c / 2) / c) as u32;
        }
    }
    out
}

fn med_codes(img: &[u32], w: usize, h: usize) -> Vec<u32> {
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let a = if x > 0 {
                img[i - 1] as i64
            } else if y > 0 {
                img[i - w] as i64
            } else {
                0
            };
            let b = if y > 0 { img[i - w] as i64 } else { a };
            let c = if x > 0 && y > 0 { img[i - w - 1] as i64 } else { b };
            let p = if c >= a.max(b) {
                a.min(b)
            } else if c <= a.min(b) {
                a.max(b)
            } else {
                a + b - c
            };
            zz(img[i] as i64 - p)
        })
        .collect()
}

fn main() {
    let mut coder = Coder::new(3).unwrap();
    for path in std::env::args().skip(1) {
        let RawDir { width: w, height: h, dtype, images: frames, .. } = read_raw_dir(std::path::Path::new(&path), 6).expect("a directory of raw frames");
        let size = |codes: &[u32], coder: &mut Coder| coder.encode(Stage::Adaptive, codes, dtype.bytes().max(2), w, Side::default()).unwrap().len();
        let (mut none, mut med, mut wp, mut wpt) = (0, 0, 0, 0);
        let (mut mean5, mut wpm, mut wpall) = (0, 0, 0);
        for (k, f) in frames.iter().enumerate().skip(1) {
            let none_codes: Vec<u32> = f.iter().map(|&v| 2 * v).collect();
            none += size(&none_codes, &mut coder);
            med += size(&med_codes(f, w, h), &mut coder);
            wp += size(&wp_codes(f, w, h, &[]), &mut coder);
            wpt += size(&wp_codes(f, w, h, &[&frames[k - 1]]), &mut coder);
            let m3 = box_mean(&frames[k - 1], w, h, 1);
            let m5 = box_mean(&frames[k - 1], w, h, 2);
            let smooth: Vec<u32> = m5.clone();
            mean5 += size(&smooth.iter().zip(f).map(|(&p, &v)| zz(v as i64 - p as i64)).collect::<Vec<_>>(), &mut coder);
            wpm += size(&wp_codes(f, w, h, &[&m3]), &mut coder);
            wpall += size(&wp_codes(f, w, h, &[&frames[k - 1], &m3, &m5]), &mut coder);
        }
        let raw = (frames.len() - 1) * w * h * dtype.bytes();
        let r = |b: usize| raw as f64 / b as f64;
        println!("{path}: ratio (adaptive stage, no temporal context) none {:.3}  med {:.3}  wp {:.3}  wp+previous {:.3}", r(none), r(med), r(wp), r(wpt));
        println!("{path}:   previous 5x5 mean {:.3}  wp+previous 3x3 mean {:.3}  wp+previous+3x3+5x5 {:.3}", r(mean5), r(wpm), r(wpall));
    }
}
