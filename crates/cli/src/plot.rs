//! The training plot: a PNG with two panels, loss (log axis) and accuracy per epoch,
//! training in blue, validation in green and test in orange. Drawn pixel by pixel (lines, a 5x7 bitmap font for the few
//! labels) and encoded by the `png` crate.

use std::path::Path;

use resnet::EpochRecord;

const W: usize = 1010;
const H: usize = 420;
const BLUE: [u8; 3] = [31, 119, 180];
const ORANGE: [u8; 3] = [255, 127, 14];
const GREEN: [u8; 3] = [44, 160, 44];
const GREY: [u8; 3] = [220, 220, 220];
const BLACK: [u8; 3] = [40, 40, 40];

/// Points `(epoch, value)` and their colour.
type Series<'a> = (&'a [(f32, f32)], [u8; 3]);

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A line `thick` pixels wide (Bresenham, with a square brush).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for ox in 0..thick {
                for oy in 0..thick {
                    self.set(x + ox - thick / 2, y + oy - thick / 2, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text in the 5x7 font at scale 2, top-left at `(x, y)`.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let Some(rows) = glyph(ch) else { continue };
            for (r, bits) in rows.iter().enumerate() {
                for (col, b) in bits.bytes().enumerate() {
                    if b == b'#' {
                        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.set(
                                x + i as i64 * 12 + col as i64 * 2 + ox,
                                y + r as i64 * 2 + oy,
                                c,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn glyph(c: char) -> Option<[&'static str; 7]> {
    Some(match c.to_ascii_uppercase() {
        '0' => [
            " ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### ",
        ],
        '1' => [
            "  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        '2' => [
            " ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####",
        ],
        '3' => [
            "#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### ",
        ],
        '4' => [
            "   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # ",
        ],
        '5' => [
            "#####", "#    ", "#### ", "    #", "    #", "#   #", " ### ",
        ],
        '6' => [
            "  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### ",
        ],
        '7' => [
            "#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   ",
        ],
        '8' => [
            " ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### ",
        ],
        '9' => [
            " ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  ",
        ],
        '-' => [
            "     ", "     ", "     ", "#####", "     ", "     ", "     ",
        ],
        '.' => [
            "     ", "     ", "     ", "     ", "     ", " ##  ", " ##  ",
        ],
        '%' => [
            "##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##",
        ],
        'A' => [
            " ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #",
        ],
        'C' => [
            " ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### ",
        ],
        'E' => [
            "#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####",
        ],
        'H' => [
            "#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #",
        ],
        'I' => [
            " ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### ",
        ],
        'L' => [
            "#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####",
        ],
        'N' => [
            "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #", "#   #",
        ],
        'O' => [
            " ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### ",
        ],
        'P' => [
            "#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    ",
        ],
        'R' => [
            "#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #",
        ],
        'S' => [
            " ####", "#    ", "#    ", " ### ", "    #", "    #", "#### ",
        ],
        'T' => [
            "#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ",
        ],
        'U' => [
            "#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### ",
        ],
        'Y' => [
            "#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  ",
        ],
        'V' => [
            "#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  ",
        ],
        'G' => [
            " ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ### ",
        ],
        '(' => [
            "   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # ",
        ],
        ')' => [
            " #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   ",
        ],
        _ => return None,
    })
}

/// A value label: few digits.
fn label(v: f32) -> String {
    if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.01 || v == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// One panel: series of `(epoch, value)` in a box at `x0..x0 + pw`; with `log`, on a
/// logarithmic value axis (a loss falls over decades: on a linear axis the first
/// epoch's squashes the rest into a flat line).
fn panel(cv: &mut Canvas, x0: i64, title: &str, series: &[Series], epochs: usize, log: bool) {
    let (top, pw, ph) = (50i64, 400i64, 300i64);
    let (left, bottom) = (x0 + 70, top + ph);
    let tf = |v: f32| if log { v.max(1e-4).log10() } else { v };
    let untf = |v: f32| if log { 10f32.powf(v) } else { v };
    let all = series.iter().flat_map(|(s, _)| s.iter().map(|p| tf(p.1)));
    let (mut lo, mut hi) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-6 {
        hi = lo + 1.0;
    }
    let pad = 0.05 * (hi - lo);
    // Losses and accuracies are never negative, and accuracies never pass 100.
    let lo = if lo >= 0.0 && !log {
        (lo - pad).max(0.0)
    } else {
        lo - pad
    };
    let hi = if title.starts_with("ACC") {
        (hi + pad).min(100.0)
    } else {
        hi + pad
    };
    let xmax = epochs.max(2) as f32;
    let to_px = |e: f32, v: f32| {
        (
            left + ((e - 1.0) / (xmax - 1.0) * pw as f32) as i64,
            bottom - ((v - lo) / (hi - lo) * ph as f32) as i64,
        )
    };
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f32 / 4.0;
        let (_, y) = to_px(1.0, v);
        cv.line((left, y), (left + pw, y), GREY, 1);
        let text = label(untf(v));
        cv.text(left - 8 - 12 * text.len() as i64, y - 7, &text, BLACK);
    }
    for (a, b) in [
        ((left, top), (left, bottom)),
        ((left, bottom), (left + pw, bottom)),
    ] {
        cv.line(a, b, BLACK, 2);
    }
    cv.text(left, top - 35, title, BLACK);
    cv.text(left + pw / 2 - 30, bottom + 30, "EPOCH", BLACK);
    cv.text(left - 6, bottom + 8, "1", BLACK);
    let last = epochs.to_string();
    cv.text(left + pw - 6 * last.len() as i64, bottom + 8, &last, BLACK);
    for (s, color) in series {
        for w in s.windows(2) {
            cv.line(
                to_px(w[0].0, tf(w[0].1)),
                to_px(w[1].0, tf(w[1].1)),
                *color,
                3,
            );
        }
        if let [only] = s {
            let p = to_px(only.0, tf(only.1));
            cv.line(p, p, *color, 6);
        }
    }
}

/// Writes the plot of `history` to `path` (atomically).
pub fn write_training_plot(
    path: &Path,
    history: &[EpochRecord],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut cv = Canvas::new();
    let pts = |f: fn(&EpochRecord) -> f32| -> Vec<(f32, f32)> {
        history.iter().map(|r| (r.epoch as f32, f(r))).collect()
    };
    let epochs = history.last().map_or(1, |r| r.epoch);
    // The validation series only where the run had a validation set.
    let val = |f: fn(&EpochRecord) -> Option<f32>| -> Vec<(f32, f32)> {
        history
            .iter()
            .filter_map(|r| f(r).map(|v| (r.epoch as f32, v)))
            .collect()
    };
    let (tl, sl) = (pts(|r| r.train_loss), pts(|r| r.test_loss));
    let (ta, sa) = (pts(|r| 100.0 * r.train_acc), pts(|r| 100.0 * r.test_acc));
    let (vl, va) = (val(|r| r.val_loss), val(|r| r.val_acc.map(|a| 100.0 * a)));
    panel(
        &mut cv,
        0,
        "LOSS (LOG)",
        &[(&tl, BLUE), (&vl, GREEN), (&sl, ORANGE)],
        epochs,
        true,
    );
    panel(
        &mut cv,
        480,
        "ACCURACY %",
        &[(&ta, BLUE), (&va, GREEN), (&sa, ORANGE)],
        epochs,
        false,
    );
    // Legend.
    cv.line((690, 22), (720, 22), BLUE, 3);
    cv.text(728, 15, "TRAIN", BLACK);
    if !vl.is_empty() {
        cv.line((800, 22), (830, 22), GREEN, 3);
        cv.text(838, 15, "VAL", BLACK);
    }
    cv.line((890, 22), (920, 22), ORANGE, 3);
    cv.text(928, 15, "TEST", BLACK);
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&cv.px)?;
    }
    resnet::weights::write_atomic(path, &bytes)?;
    Ok(())
}
