//! A JPEG decoder that gives the pixels PIL gives.
//!
//! torchvision reads images with PIL, and PIL decodes JPEG with libjpeg-turbo in its
//! default settings. A model's accuracy is measured on those pixels, so a decoder that
//! rounds differently (1-6 grey levels apart is usual between JPEG decoders) shifts every
//! input a little. This one follows the arithmetic of libjpeg's default path, step by step:
//!
//! 1. **Entropy decoding** (ITU T.81 Annex F and G): Huffman-coded baseline, extended
//!    and progressive scans, restart intervals. Corrupt data is treated as libjpeg
//!    treats it (an unknown code reads as 0, a marker inside a scan ends it with zero
//!    bits); data that ends before the image does is an error (PIL: "image file is
//!    truncated").
//! 2. **Inverse DCT**: libjpeg's "ISLOW" integer transform (the Loeffler, Ligtenberg and
//!    Moschytz factorisation with 13-bit constants, 2 extra bits between the column and
//!    the row pass), results clamped to 0..=255 as libjpeg-turbo's SIMD code does.
//! 3. **Upsampling** of subsampled chroma: libjpeg's "fancy" triangle filter (weights
//!    3/4 and 1/4, with its alternating rounding bias) for 2:1 horizontal and/or vertical
//!    ratios, edges replicated; plain replication for other integer ratios and for
//!    components at most 2 samples wide.
//! 4. **Colour conversion**: YCbCr to RGB with libjpeg's 16-bit fixed-point factors
//!    (1.402, 0.34414, 0.71414, 1.772) rounded the way its tables round them; Adobe CMYK
//!    and YCCK as PIL converts them (`CMYK;I`, then PIL's CMYK to RGB).
//!
//! Not supported (a [`Error::Unsupported`] naming the feature): arithmetic coding,
//! lossless and hierarchical JPEG, 12- and 16-bit samples, fractional sampling ratios.
//! libjpeg's block smoothing of progressive images whose scans stop before full
//! precision is not reproduced (every encoder we know sends all of them).

use std::fmt;

/// Why a JPEG could not be decoded.
#[derive(Debug)]
pub(crate) enum Error {
    /// The bytes break the format (the message says where).
    Corrupt(String),
    /// The data ends before the image does.
    Truncated(String),
    /// A valid JPEG using a feature this decoder lacks.
    Unsupported(String),
    /// The frame is refused by the caller's size check, or needs more memory than allowed.
    Refused(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Corrupt(m) => write!(f, "corrupt JPEG: {m}"),
            Error::Truncated(m) => write!(f, "truncated JPEG: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported JPEG: {m}"),
            Error::Refused(m) => write!(f, "{m}"),
        }
    }
}

fn corrupt<T>(m: impl Into<String>) -> Result<T, Error> {
    Err(Error::Corrupt(m.into()))
}

/// `NATURAL[k]` is the position, in row-major order, of the `k`-th coefficient in
/// zig-zag order. The 16 entries past 63 map to 63 so that corrupt run lengths (which
/// can carry `k` up to 78) land on the last coefficient, as in libjpeg.
const NATURAL: [u8; 80] = natural_order();

const fn natural_order() -> [u8; 80] {
    let mut out = [63u8; 80];
    let mut k = 0;
    let mut s = 0; // the anti-diagonal: row + column
    while s < 15 {
        // Odd diagonals run down-left (row increasing), even ones up-right.
        let mut i = 0;
        while i <= s {
            let row = if s % 2 == 1 { i } else { s - i };
            let col = s - row;
            if row < 8 && col < 8 {
                out[k] = (row * 8 + col) as u8;
                k += 1;
            }
            i += 1;
        }
        s += 1;
    }
    out
}

// ---- Reading marker segments ----

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> Result<u8, Error> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| Error::Truncated("the file ends inside a marker segment".into()))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end =
            end.ok_or_else(|| Error::Truncated("the file ends inside a marker segment".into()))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    /// A marker segment's payload (the length field counts itself).
    fn segment(&mut self, marker: u8) -> Result<Cursor<'a>, Error> {
        let len = self.u16()? as usize;
        if len < 2 {
            return corrupt(format!("marker 0x{marker:02X} has a length of {len}"));
        }
        Ok(Cursor {
            data: self.bytes(len - 2)?,
            pos: 0,
        })
    }
    fn rest(&self) -> usize {
        self.data.len() - self.pos
    }
}

// ---- Huffman tables ----

const LOOKUP_BITS: u32 = 9;

#[derive(Clone)]
struct Huffman {
    /// Indexed by the next 9 bits: `length << 8 | symbol`, or 0 for a longer code.
    lookup: Vec<u16>,
    /// The largest code of each length (-1 if none), for codes longer than 9 bits.
    maxcode: [i32; 17],
    /// Added to a code of each length to index `values`.
    offset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Result<Huffman, Error> {
        let mut lookup = vec![0u16; 1 << LOOKUP_BITS];
        let mut maxcode = [-1i32; 17];
        let mut offset = [0i32; 17];
        let mut code = 0u32;
        let mut index = 0usize;
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as usize;
            offset[len as usize] = index as i32 - code as i32;
            for _ in 0..n {
                // A code of `len` bits must fit in `len` bits (libjpeg: "Bogus Huffman
                // table").
                if code >= 1 << len {
                    return corrupt("a Huffman table has more codes than its lengths allow");
                }
                if len <= LOOKUP_BITS {
                    let first = (code << (LOOKUP_BITS - len)) as usize;
                    let entry = (len as u16) << 8 | values[index] as u16;
                    lookup[first..first + (1 << (LOOKUP_BITS - len))].fill(entry);
                }
                code += 1;
                index += 1;
            }
            if n > 0 {
                maxcode[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        Ok(Huffman {
            lookup,
            maxcode,
            offset,
            values: values.to_vec(),
        })
    }
}

// ---- The standard's example Huffman tables (T.81 Annex K.3) ----
//
// Motion-JPEG frames often leave them out; libjpeg then uses these for tables 0
// (luminance) and 1 (chrominance), and so do we.

const STD_DC_COUNTS: [[u8; 16]; 2] = [
    [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
];
const STD_DC_VALUES: [u8; 12] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
];
const STD_AC_COUNTS: [[u8; 16]; 2] = [
    [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125],
    [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119],
];
const STD_AC_VALUES: [[u8; 162]; 2] = [
    [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
    [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
];

/// Fills Huffman tables 0 and 1 that the file has not defined with the standard's.
fn default_tables(
    dc: &mut [Option<Huffman>; 4],
    ac: &mut [Option<Huffman>; 4],
) -> Result<(), Error> {
    for i in 0..2 {
        if dc[i].is_none() {
            dc[i] = Some(Huffman::new(&STD_DC_COUNTS[i], &STD_DC_VALUES)?);
        }
        if ac[i].is_none() {
            ac[i] = Some(Huffman::new(&STD_AC_COUNTS[i], &STD_AC_VALUES[i])?);
        }
    }
    Ok(())
}

// ---- The entropy-coded bit stream ----

struct Bits<'a> {
    data: &'a [u8],
    /// The next byte to read.
    pos: usize,
    /// Buffered bits, the next one at bit 63.
    acc: u64,
    nbits: u32,
    /// A marker was met: from there on the stream reads as zeros (libjpeg's behaviour).
    marker: bool,
    /// Zero bits appended past the end of the file; reading into them is truncation.
    padding: u32,
    /// Set when a restart found the stream already read past the end.
    overrun: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Bits<'a> {
        Bits {
            data,
            pos,
            acc: 0,
            nbits: 0,
            marker: false,
            padding: 0,
            overrun: false,
        }
    }

    fn fill(&mut self) {
        while self.nbits <= 56 {
            let mut byte = 0u8;
            if !self.marker && self.pos < self.data.len() {
                let b = self.data[self.pos];
                if b == 0xFF {
                    // 0xFF 0x00 is a data byte 0xFF; fill bytes 0xFF may precede a marker.
                    let mut next = self.pos + 1;
                    while next < self.data.len() && self.data[next] == 0xFF {
                        next += 1;
                    }
                    match self.data.get(next) {
                        Some(0) => {
                            byte = 0xFF;
                            self.pos = next + 1;
                        }
                        Some(_) => {
                            self.marker = true;
                            self.pos = next - 1;
                        }
                        None => {
                            self.pos = self.data.len();
                            self.padding += 8;
                        }
                    }
                } else {
                    byte = b;
                    self.pos += 1;
                }
            } else if !self.marker {
                self.padding += 8;
            }
            self.acc |= (byte as u64) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    #[inline]
    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.nbits < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as u32;
        self.acc <<= n;
        self.nbits -= n;
        v
    }

    #[inline]
    fn bit(&mut self) -> bool {
        self.bits(1) == 1
    }

    /// Reads `n` bits as the signed value of T.81's EXTEND.
    #[inline]
    fn receive_extend(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        let v = self.bits(n) as i32;
        if v < 1 << (n - 1) {
            v - (1 << n) + 1
        } else {
            v
        }
    }

    #[inline]
    fn decode(&mut self, h: &Huffman) -> u8 {
        if self.nbits < 16 {
            self.fill();
        }
        let peek = (self.acc >> 48) as u32;
        let e = h.lookup[(peek >> (16 - LOOKUP_BITS)) as usize];
        if e != 0 {
            let len = (e >> 8) as u32;
            self.acc <<= len;
            self.nbits -= len;
            return e as u8;
        }
        for len in LOOKUP_BITS + 1..=16 {
            let code = (peek >> (16 - len)) as i32;
            if code <= h.maxcode[len as usize] {
                self.acc <<= len;
                self.nbits -= len;
                let i = (code + h.offset[len as usize]) as usize;
                return h.values.get(i).copied().unwrap_or(0);
            }
        }
        // No code matches: libjpeg warns and reads a 0 symbol.
        self.acc <<= 16;
        self.nbits -= 16;
        0
    }

    /// Whether the decoding so far read past the end of the file.
    fn overran(&self) -> bool {
        self.overrun || self.padding > self.nbits
    }

    /// Moves to the next marker (after the data just decoded) and returns its position.
    fn next_marker(&mut self) -> usize {
        let mut p = self.pos;
        loop {
            while p < self.data.len() && self.data[p] != 0xFF {
                p += 1;
            }
            let mut q = p + 1;
            while q < self.data.len() && self.data[q] == 0xFF {
                q += 1;
            }
            match self.data.get(q) {
                Some(0) => p = q + 1,
                Some(_) => return q - 1,
                None => return self.data.len(),
            }
        }
    }

    /// At a restart interval's end: drops buffered bits and reads the RSTn marker.
    fn restart(&mut self) {
        self.overrun |= self.overran();
        let p = self.next_marker();
        self.acc = 0;
        self.nbits = 0;
        self.padding = 0;
        if p + 1 < self.data.len() && (0xD0..=0xD7).contains(&self.data[p + 1]) {
            self.pos = p + 2;
            self.marker = false;
        } else {
            // Not a restart marker: leave it for the marker loop; the rest of the scan
            // reads as zeros (libjpeg resynchronises the same way in the common case).
            self.pos = p;
            self.marker = p < self.data.len();
        }
    }
}

// ---- Frame and scan ----

struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant_index: usize,
    /// The quantisation table in natural order, latched at the component's first scan.
    quant: Option<[i32; 64]>,
    /// Samples of this component in the image.
    width: usize,
    height: usize,
    /// Blocks stored per row and column (whole MCUs for interleaved frames).
    blocks_w: usize,
    blocks_h: usize,
    coefs: Vec<i16>,
    /// The first block row `coefs` holds: 0, or, when a baseline image is streamed
    /// (only one MCU row of blocks kept), that row's first.
    row0: usize,
    dc_pred: i32,
}

impl Component {
    fn visible_blocks(&self) -> (usize, usize) {
        (self.width.div_ceil(8), self.height.div_ceil(8))
    }
}

struct Frame {
    progressive: bool,
    width: usize,
    height: usize,
    hmax: usize,
    vmax: usize,
    mcus_x: usize,
    mcus_y: usize,
    comps: Vec<Component>,
    /// True once the coefficients are allocated (at the first scan: a baseline image
    /// whose one scan holds every component needs only one MCU row of them).
    allocated: bool,
}

#[derive(Clone, Copy)]
struct ScanComp {
    index: usize,
    dc: usize,
    ac: usize,
}

struct Scan {
    comps: Vec<ScanComp>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

/// The JPEG colour transform, decided as libjpeg decides it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Colour {
    Grey,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

/// Where decoded rows go, top to bottom: the whole image, or a consumer that keeps only
/// what it needs (a resize), so the full-size image is never held.
pub(crate) trait RowSink {
    /// Called once, before the first row: the image's size and channels (1 or 3).
    fn start(&mut self, width: usize, height: usize, channels: usize) -> Result<(), String>;
    /// One row, `width * channels` bytes.
    fn row(&mut self, row: &[u8]);
}

/// Decodes a JPEG file, giving its rows (grey or RGB) to `sink` as they are made.
/// `accept_size(width, height)` is called with the frame's size before anything is
/// allocated, and may refuse it; `max_alloc` bounds the decoder's own memory (the
/// coefficients of every component).
pub(crate) fn decode_into(
    bytes: &[u8],
    accept_size: impl FnOnce(u64, u64) -> Result<(), String>,
    max_alloc: u64,
    sink: &mut dyn RowSink,
) -> Result<(), Error> {
    let mut c = Cursor {
        data: bytes,
        pos: 0,
    };
    if c.u8()? != 0xFF || c.u8()? != 0xD8 {
        return corrupt("no start-of-image marker");
    }
    let mut accept_size = Some(accept_size);
    let mut frame: Option<Frame> = None;
    let mut dc_tables: [Option<Huffman>; 4] = Default::default();
    let mut ac_tables: [Option<Huffman>; 4] = Default::default();
    let mut quant: [Option<[u16; 64]>; 4] = [None; 4];
    let mut restart_interval = 0usize;
    let mut jfif = false;
    let mut adobe: Option<u8> = None;
    let mut scans = 0usize;
    let mut saw_end = false;
    // True once a baseline image's one scan was decoded and its rows given to `sink`.
    let mut streamed = false;
    'markers: loop {
        // Find the next marker, skipping fill bytes (and, as libjpeg does, garbage).
        let code = loop {
            if c.rest() == 0 {
                break 'markers;
            }
            if c.u8()? != 0xFF {
                continue;
            }
            let mut m = c.u8()?;
            while m == 0xFF {
                m = c.u8()?;
            }
            if m != 0 {
                break m;
            }
        };
        match code {
            0xD9 => {
                saw_end = true;
                break;
            }
            0xD0..=0xD7 | 0x01 => {} // stray restart marker or TEM: no payload
            0xC0..=0xC2 => {
                if frame.is_some() {
                    return corrupt("more than one frame header");
                }
                let mut s = c.segment(code)?;
                let f = read_frame(&mut s, code == 0xC2)?;
                if let Some(accept) = accept_size.take() {
                    accept(f.width as u64, f.height as u64).map_err(Error::Refused)?;
                }
                frame = Some(allocate(f, max_alloc)?);
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                let what = match code {
                    0xC3 => "lossless",
                    0xC5..=0xC7 => "hierarchical",
                    _ => "arithmetic-coded",
                };
                return Err(Error::Unsupported(format!(
                    "{what} JPEG (SOF 0x{code:02X})"
                )));
            }
            0xC4 => {
                let mut s = c.segment(code)?;
                while s.rest() > 0 {
                    let tc_th = s.u8()?;
                    let (class, id) = (tc_th >> 4, (tc_th & 15) as usize);
                    if class > 1 || id > 3 {
                        return corrupt(format!("Huffman table class {class} id {id}"));
                    }
                    let mut counts = [0u8; 16];
                    counts.copy_from_slice(s.bytes(16)?);
                    let total: usize = counts.iter().map(|&n| n as usize).sum();
                    if total > 256 {
                        return corrupt("a Huffman table with more than 256 symbols");
                    }
                    let table = Huffman::new(&counts, s.bytes(total)?)?;
                    if class == 0 {
                        dc_tables[id] = Some(table);
                    } else {
                        ac_tables[id] = Some(table);
                    }
                }
            }
            0xDB => {
                let mut s = c.segment(code)?;
                while s.rest() > 0 {
                    let pq_tq = s.u8()?;
                    let (precision, id) = (pq_tq >> 4, (pq_tq & 15) as usize);
                    if precision > 1 || id > 3 {
                        return corrupt(format!(
                            "quantisation table precision {precision} id {id}"
                        ));
                    }
                    let mut table = [0u16; 64];
                    for k in 0..64 {
                        let q = if precision == 0 {
                            s.u8()? as u16
                        } else {
                            s.u16()?
                        };
                        table[NATURAL[k] as usize] = q;
                    }
                    quant[id] = Some(table);
                }
            }
            0xDD => {
                let mut s = c.segment(code)?;
                restart_interval = s.u16()? as usize;
            }
            0xDA => {
                let Some(f) = frame.as_mut() else {
                    return corrupt("a scan before the frame header");
                };
                let mut s = c.segment(code)?;
                let scan = read_scan(&mut s, f)?;
                default_tables(&mut dc_tables, &mut ac_tables)?;
                for sc in &scan.comps {
                    let comp = &mut f.comps[sc.index];
                    if comp.quant.is_none() {
                        let q = quant[comp.quant_index].ok_or_else(|| {
                            Error::Corrupt(format!(
                                "quantisation table {} is used but not defined",
                                comp.quant_index
                            ))
                        })?;
                        // libjpeg keeps its multipliers in 16 bits.
                        comp.quant = Some(q.map(|v| v as i16 as i32));
                    }
                    let progressive_ac = f.progressive && scan.ss > 0;
                    let progressive_dc_refine = f.progressive && scan.ss == 0 && scan.ah > 0;
                    if !progressive_ac && !progressive_dc_refine && dc_tables[sc.dc].is_none() {
                        return corrupt(format!(
                            "DC Huffman table {} is used but not defined",
                            sc.dc
                        ));
                    }
                    if (!f.progressive || scan.ss > 0) && ac_tables[sc.ac].is_none() {
                        return corrupt(format!(
                            "AC Huffman table {} is used but not defined",
                            sc.ac
                        ));
                    }
                }
                if streamed {
                    return corrupt("another scan after a scan that held every component");
                }
                let stream = !f.allocated && allocate_for(f, &scan);
                let mut streamer = if stream {
                    streamed = true;
                    Some(Streamer::new(f, colour_of(f, jfif, adobe)?, &mut *sink)?)
                } else {
                    None
                };
                let mut bits = Bits::new(bytes, c.pos);
                decode_scan(
                    f,
                    &scan,
                    &mut bits,
                    &dc_tables,
                    &ac_tables,
                    restart_interval,
                    streamer.as_mut(),
                )?;
                if bits.overran() {
                    return Err(Error::Truncated("the file ends inside a scan".into()));
                }
                c.pos = bits.next_marker();
                scans += 1;
            }
            0xE0 => {
                let s = c.segment(code)?;
                jfif |= s.data.starts_with(b"JFIF\0");
            }
            0xEE => {
                let s = c.segment(code)?;
                if s.data.len() >= 12 && s.data.starts_with(b"Adobe") {
                    adobe = Some(s.data[11]);
                }
            }
            _ => {
                c.segment(code)?;
            }
        }
    }
    let Some(f) = frame else {
        return corrupt("no frame header");
    };
    // A sequential image whose every scan is there may lack only the end marker; a
    // progressive one may be missing scans (PIL refuses both as truncated unless told
    // otherwise; we accept the first, as libjpeg decodes it whole).
    if scans == 0 {
        return corrupt("no scan (no image data)");
    }
    if !saw_end && f.progressive {
        return Err(Error::Truncated(
            "the file ends before the end-of-image marker".into(),
        ));
    }
    if streamed {
        return Ok(());
    }
    finish(f, jfif, adobe, sink)
}

fn read_frame(s: &mut Cursor, progressive: bool) -> Result<Frame, Error> {
    let precision = s.u8()?;
    if precision != 8 {
        return Err(Error::Unsupported(format!("{precision}-bit samples")));
    }
    let height = s.u16()? as usize;
    let width = s.u16()? as usize;
    if height == 0 {
        return Err(Error::Unsupported(
            "a height given after the scan (DNL marker)".into(),
        ));
    }
    if width == 0 {
        return corrupt("width 0");
    }
    let n = s.u8()? as usize;
    if !matches!(n, 1 | 3 | 4) {
        return Err(Error::Unsupported(format!("{n} colour components")));
    }
    let mut comps = Vec::with_capacity(n);
    for _ in 0..n {
        let id = s.u8()?;
        let hv = s.u8()?;
        let (h, v) = ((hv >> 4) as usize, (hv & 15) as usize);
        let quant_index = s.u8()? as usize;
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return corrupt(format!("sampling factors {h}x{v}"));
        }
        if quant_index > 3 {
            return corrupt(format!("quantisation table {quant_index}"));
        }
        comps.push(Component {
            id,
            h,
            v,
            quant_index,
            quant: None,
            width: 0,
            height: 0,
            blocks_w: 0,
            blocks_h: 0,
            coefs: Vec::new(),
            row0: 0,
            dc_pred: 0,
        });
    }
    let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
    let mcus_x = width.div_ceil(8 * hmax);
    let mcus_y = height.div_ceil(8 * vmax);
    for comp in &mut comps {
        comp.width = (width * comp.h).div_ceil(hmax);
        comp.height = (height * comp.v).div_ceil(vmax);
        if n == 1 {
            (comp.blocks_w, comp.blocks_h) = comp.visible_blocks();
        } else {
            comp.blocks_w = mcus_x * comp.h;
            comp.blocks_h = mcus_y * comp.v;
        }
    }
    Ok(Frame {
        progressive,
        width,
        height,
        hmax,
        vmax,
        mcus_x,
        mcus_y,
        comps,
        allocated: false,
    })
}

/// Checks that the whole image's coefficients fit `max_alloc` (they are allocated at
/// the first scan, [`allocate_for`]).
fn allocate(f: Frame, max_alloc: u64) -> Result<Frame, Error> {
    let blocks: u64 = f
        .comps
        .iter()
        .map(|c| c.blocks_w as u64 * c.blocks_h as u64)
        .sum();
    let bytes = blocks * 64 * 2;
    if bytes > max_alloc {
        return Err(Error::Refused(format!(
            "a {}x{} JPEG needs {} MB of coefficients, over the decoder's {} MB",
            f.width,
            f.height,
            bytes / 1_000_000,
            max_alloc / 1_000_000
        )));
    }
    Ok(f)
}

/// Allocates the coefficients at the first scan: one MCU row of blocks per component
/// when the image streams (a baseline frame whose scan holds every component), the
/// whole image otherwise. Returns whether it streams.
fn allocate_for(f: &mut Frame, scan: &Scan) -> bool {
    let stream = !f.progressive && scan.comps.len() == f.comps.len();
    for c in &mut f.comps {
        let rows = if stream { c.v } else { c.blocks_h };
        c.coefs = vec![0; c.blocks_w * rows * 64];
        c.row0 = 0;
    }
    f.allocated = true;
    stream
}

fn read_scan(s: &mut Cursor, f: &Frame) -> Result<Scan, Error> {
    let n = s.u8()? as usize;
    if n == 0 || n > 4 {
        return corrupt(format!("a scan of {n} components"));
    }
    let mut comps: Vec<ScanComp> = Vec::with_capacity(n);
    for _ in 0..n {
        let id = s.u8()?;
        let tables = s.u8()?;
        let index = f.comps.iter().position(|c| c.id == id).ok_or_else(|| {
            Error::Corrupt(format!("a scan names component {id}, not in the frame"))
        })?;
        if comps.iter().any(|c| c.index == index) {
            return corrupt(format!("a scan names component {id} twice"));
        }
        let (dc, ac) = ((tables >> 4) as usize, (tables & 15) as usize);
        if dc > 3 || ac > 3 {
            return corrupt(format!("Huffman table {dc}/{ac}"));
        }
        comps.push(ScanComp { index, dc, ac });
    }
    let ss = s.u8()? as usize;
    let se = s.u8()? as usize;
    let a = s.u8()?;
    let (ah, al) = ((a >> 4) as u32, (a & 15) as u32);
    if f.progressive {
        let valid = if ss == 0 {
            se == 0
        } else {
            se >= ss && se <= 63 && n == 1
        };
        if !valid || ah > 13 || al > 13 {
            return corrupt(format!(
                "progressive scan parameters Ss={ss} Se={se} Ah={ah} Al={al} on {n} components"
            ));
        }
    } else if ss != 0 || se != 63 || ah != 0 || al != 0 {
        // libjpeg only warns here; the scan is decoded as the whole spectrum.
    }
    let blocks_per_mcu: usize = comps
        .iter()
        .map(|c| f.comps[c.index].h * f.comps[c.index].v)
        .sum();
    if n > 1 && blocks_per_mcu > 10 {
        return corrupt(format!("an MCU of {blocks_per_mcu} blocks (at most 10)"));
    }
    Ok(Scan {
        comps,
        ss,
        se,
        ah,
        al,
    })
}

#[allow(clippy::too_many_arguments)]
fn decode_scan(
    f: &mut Frame,
    scan: &Scan,
    bits: &mut Bits,
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
    mut stream: Option<&mut Streamer>,
) -> Result<(), Error> {
    for sc in &scan.comps {
        f.comps[sc.index].dc_pred = 0;
    }
    let kind = if !f.progressive {
        Kind::Sequential
    } else if scan.ss == 0 {
        if scan.ah == 0 {
            Kind::DcFirst
        } else {
            Kind::DcRefine
        }
    } else if scan.ah == 0 {
        Kind::AcFirst
    } else {
        Kind::AcRefine
    };
    let mut eobrun = 0u32;
    let mut mcu = 0usize;
    let restart = |bits: &mut Bits, comps: &mut [Component], eobrun: &mut u32, mcu: &mut usize| {
        if restart_interval > 0 && *mcu > 0 && mcu.is_multiple_of(restart_interval) {
            bits.restart();
            for sc in &scan.comps {
                comps[sc.index].dc_pred = 0;
            }
            *eobrun = 0;
        }
        *mcu += 1;
    };
    let tables = |sc: &ScanComp| (dc_tables[sc.dc].as_ref(), ac_tables[sc.ac].as_ref());
    if scan.comps.len() == 1 {
        let sc = scan.comps[0];
        let (bw, bh) = f.comps[sc.index].visible_blocks();
        let (dc, ac) = tables(&sc);
        for by in 0..bh {
            let v = f.comps[sc.index].v;
            if stream.is_some() && by % v == 0 {
                // A grey image streams by bands of `v` block rows, from zeros.
                let comp = &mut f.comps[sc.index];
                comp.row0 = by;
                comp.coefs.fill(0);
            }
            for bx in 0..bw {
                restart(bits, &mut f.comps, &mut eobrun, &mut mcu);
                let comp = &mut f.comps[sc.index];
                let at = ((by - comp.row0) * comp.blocks_w + bx) * 64;
                let block: &mut [i16; 64] = (&mut comp.coefs[at..at + 64]).try_into().unwrap();
                decode_block(
                    kind,
                    scan,
                    bits,
                    block,
                    &mut comp.dc_pred,
                    dc,
                    ac,
                    &mut eobrun,
                )?;
            }
            if bits.overran() {
                return Ok(());
            }
            if (by + 1) % v == 0 || by + 1 == bh {
                if let Some(st) = stream.as_deref_mut() {
                    st.band(f, by / v)?;
                }
            }
        }
        if let Some(st) = stream {
            st.finish(f)?;
        }
    } else {
        for my in 0..f.mcus_y {
            if stream.is_some() {
                // One MCU row of blocks at a time, from zeros.
                for c in &mut f.comps {
                    c.row0 = my * c.v;
                    c.coefs.fill(0);
                }
            }
            for mx in 0..f.mcus_x {
                restart(bits, &mut f.comps, &mut eobrun, &mut mcu);
                for sc in &scan.comps {
                    let (dc, ac) = tables(sc);
                    let comp = &mut f.comps[sc.index];
                    for v in 0..comp.v {
                        for h in 0..comp.h {
                            let at =
                                ((my * comp.v + v - comp.row0) * comp.blocks_w + mx * comp.h + h)
                                    * 64;
                            let block: &mut [i16; 64] =
                                (&mut comp.coefs[at..at + 64]).try_into().unwrap();
                            decode_block(
                                kind,
                                scan,
                                bits,
                                block,
                                &mut comp.dc_pred,
                                dc,
                                ac,
                                &mut eobrun,
                            )?;
                        }
                    }
                }
            }
            if bits.overran() {
                return Ok(());
            }
            if let Some(st) = stream.as_deref_mut() {
                st.band(f, my)?;
            }
        }
        if let Some(st) = stream {
            st.finish(f)?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

fn table(t: Option<&Huffman>) -> Result<&Huffman, Error> {
    t.ok_or_else(|| Error::Corrupt("missing Huffman table".into()))
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn decode_block(
    kind: Kind,
    scan: &Scan,
    bits: &mut Bits,
    block: &mut [i16; 64],
    dc_pred: &mut i32,
    dc: Option<&Huffman>,
    ac: Option<&Huffman>,
    eobrun: &mut u32,
) -> Result<(), Error> {
    // The tables were checked before the scan for the kinds that use them.
    match kind {
        Kind::Sequential | Kind::DcFirst => {
            let s = bits.decode(table(dc)?) as u32;
            if s > 15 {
                return corrupt(format!("a DC difference of {s} bits"));
            }
            *dc_pred = dc_pred.wrapping_add(bits.receive_extend(s));
            if kind == Kind::DcFirst {
                block[0] = (*dc_pred << scan.al) as i16;
                return Ok(());
            }
            block[0] = *dc_pred as i16;
            let ac = table(ac)?;
            let mut k = 1;
            while k < 64 {
                let rs = bits.decode(ac);
                let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
                if s != 0 {
                    k += r;
                    block[NATURAL[k] as usize] = bits.receive_extend(s) as i16;
                    k += 1;
                } else if r == 15 {
                    k += 16;
                } else {
                    break;
                }
            }
        }
        Kind::DcRefine => {
            if bits.bit() {
                block[0] |= 1 << scan.al;
            }
        }
        Kind::AcFirst => {
            if *eobrun > 0 {
                *eobrun -= 1;
                return Ok(());
            }
            let ac = table(ac)?;
            let mut k = scan.ss;
            while k <= scan.se {
                let rs = bits.decode(ac);
                let (r, s) = ((rs >> 4) as u32, (rs & 15) as u32);
                if s != 0 {
                    k += r as usize;
                    let v = bits.receive_extend(s);
                    block[NATURAL[k] as usize] = (v << scan.al) as i16;
                } else if r == 15 {
                    k += 15;
                } else {
                    *eobrun = 1 << r;
                    if r > 0 {
                        *eobrun += bits.bits(r);
                    }
                    *eobrun -= 1;
                    break;
                }
                k += 1;
            }
        }
        Kind::AcRefine => {
            let p1: i16 = 1 << scan.al;
            let m1: i16 = (-1i16) << scan.al;
            let mut k = scan.ss;
            let refine = |bits: &mut Bits, c: &mut i16| {
                if *c != 0 && bits.bit() && *c & p1 == 0 {
                    *c = c.wrapping_add(if *c >= 0 { p1 } else { m1 });
                }
            };
            if *eobrun == 0 {
                let ac = table(ac)?;
                while k <= scan.se {
                    let rs = bits.decode(ac);
                    let (mut r, s) = ((rs >> 4) as i32, rs & 15);
                    let mut value = 0i16;
                    if s != 0 {
                        // s must be 1 here; libjpeg warns and goes on otherwise.
                        value = if bits.bit() { p1 } else { m1 };
                    } else if r != 15 {
                        *eobrun = 1 << r;
                        if r > 0 {
                            *eobrun += bits.bits(r as u32);
                        }
                        break;
                    }
                    // Skip `r` zero coefficients (refining the non-zero ones met on the way).
                    while k <= scan.se {
                        let c = &mut block[NATURAL[k] as usize];
                        if *c != 0 {
                            refine(bits, c);
                        } else {
                            if r == 0 {
                                break;
                            }
                            r -= 1;
                        }
                        k += 1;
                    }
                    if value != 0 {
                        block[NATURAL[k] as usize] = value;
                    }
                    k += 1;
                }
            }
            if *eobrun > 0 {
                // The rest of the band is in an end-of-band run: refine its non-zeros.
                while k <= scan.se {
                    refine(bits, &mut block[NATURAL[k] as usize]);
                    k += 1;
                }
                *eobrun -= 1;
            }
        }
    }
    Ok(())
}

// ---- Inverse DCT (libjpeg's ISLOW) ----

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

/// `round(x * 2^13)`: libjpeg's `FIX` for the IDCT constants.
const fn fix13(x: f64) -> i32 {
    (x * (1 << CONST_BITS) as f64 + 0.5) as i32
}

const F_0_298631336: i32 = fix13(0.298631336);
const F_0_390180644: i32 = fix13(0.390180644);
const F_0_541196100: i32 = fix13(0.541196100);
const F_0_765366865: i32 = fix13(0.765366865);
const F_0_899976223: i32 = fix13(0.899976223);
const F_1_175875602: i32 = fix13(1.175875602);
const F_1_501321110: i32 = fix13(1.501321110);
const F_1_847759065: i32 = fix13(1.847759065);
const F_1_961570560: i32 = fix13(1.961570560);
const F_2_053119869: i32 = fix13(2.053119869);
const F_2_562915447: i32 = fix13(2.562915447);
const F_3_072711026: i32 = fix13(3.072711026);

/// `x / 2^n` rounded half up (libjpeg's `DESCALE`).
#[inline(always)]
fn descale(x: i32, n: u32) -> i32 {
    x.wrapping_add(1 << (n - 1)) >> n
}

/// One 1-D 8-point inverse DCT of the scaled inputs `i[0..8]`, in the LL&M
/// factorisation; returns the eight outputs scaled by `2^13` (before descaling).
#[inline(always)]
fn idct_1d(i: [i32; 8]) -> [i32; 8] {
    let w = |a: i32, b: i32| a.wrapping_mul(b);
    // Even part: the rotation of inputs 2 and 6, then the butterflies with 0 and 4.
    let z1 = w(i[2].wrapping_add(i[6]), F_0_541196100);
    let t2 = z1.wrapping_add(w(i[6], -F_1_847759065));
    let t3 = z1.wrapping_add(w(i[2], F_0_765366865));
    let t0 = i[0].wrapping_add(i[4]) << CONST_BITS;
    let t1 = i[0].wrapping_sub(i[4]) << CONST_BITS;
    let (t10, t13) = (t0.wrapping_add(t3), t0.wrapping_sub(t3));
    let (t11, t12) = (t1.wrapping_add(t2), t1.wrapping_sub(t2));
    // Odd part: inputs 7, 5, 3, 1.
    let (o0, o1, o2, o3) = (i[7], i[5], i[3], i[1]);
    let z1 = o0.wrapping_add(o3);
    let z2 = o1.wrapping_add(o2);
    let z3 = o0.wrapping_add(o2);
    let z4 = o1.wrapping_add(o3);
    let z5 = w(z3.wrapping_add(z4), F_1_175875602);
    let o0 = w(o0, F_0_298631336);
    let o1 = w(o1, F_2_053119869);
    let o2 = w(o2, F_3_072711026);
    let o3 = w(o3, F_1_501321110);
    let z1 = w(z1, -F_0_899976223);
    let z2 = w(z2, -F_2_562915447);
    let z3 = w(z3, -F_1_961570560).wrapping_add(z5);
    let z4 = w(z4, -F_0_390180644).wrapping_add(z5);
    let o0 = o0.wrapping_add(z1).wrapping_add(z3);
    let o1 = o1.wrapping_add(z2).wrapping_add(z4);
    let o2 = o2.wrapping_add(z2).wrapping_add(z3);
    let o3 = o3.wrapping_add(z1).wrapping_add(z4);
    [
        t10.wrapping_add(o3),
        t11.wrapping_add(o2),
        t12.wrapping_add(o1),
        t13.wrapping_add(o0),
        t13.wrapping_sub(o0),
        t12.wrapping_sub(o1),
        t11.wrapping_sub(o2),
        t10.wrapping_sub(o3),
    ]
}

/// Dequantises and inverse-transforms one block into 8x8 samples at `out` (row stride
/// `stride`), level-shifted by 128 and clamped to 0..=255.
fn idct_block(coefs: &[i16; 64], quant: &[i32; 64], out: &mut [u8], stride: usize) {
    if coefs[1..].iter().all(|&c| c == 0) {
        // A flat block: both passes reduce to the DC term (the same result as the full
        // transform, which gives `DC << 2` in every column-pass output, then descales).
        let dc = (coefs[0] as i32).wrapping_mul(quant[0]) << PASS1_BITS;
        let v = descale(dc, PASS1_BITS + 3).wrapping_add(128).clamp(0, 255) as u8;
        for row in 0..8 {
            out[row * stride..row * stride + 8].fill(v);
        }
        return;
    }
    let mut ws = [0i32; 64];
    // Pass 1: columns, from dequantised coefficients, keeping 2 extra bits.
    for col in 0..8 {
        let c = |row: usize| (coefs[row * 8 + col] as i32).wrapping_mul(quant[row * 8 + col]);
        let out = if (1..8).all(|row| coefs[row * 8 + col] == 0) {
            // A column of one DC term: the transform is a constant (same result).
            [c(0) << PASS1_BITS; 8]
        } else {
            idct_1d([c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7)])
                .map(|v| descale(v, CONST_BITS - PASS1_BITS))
        };
        for (row, v) in out.into_iter().enumerate() {
            ws[row * 8 + col] = v;
        }
    }
    // Pass 2: rows; remove the 2 extra bits and the factor 8 of the 2-D transform.
    for row in 0..8 {
        let r: [i32; 8] = ws[row * 8..row * 8 + 8].try_into().unwrap();
        let vals = idct_1d(r).map(|v| descale(v, CONST_BITS + PASS1_BITS + 3));
        let dst = &mut out[row * stride..row * stride + 8];
        for (d, v) in dst.iter_mut().zip(vals) {
            *d = (v.wrapping_add(128)).clamp(0, 255) as u8;
        }
    }
}

// ---- Output: IDCT, upsampling, colour conversion ----

/// The colour transform, decided as libjpeg decides it, and a check that every
/// component's sampling divides the largest.
fn colour_of(f: &Frame, jfif: bool, adobe: Option<u8>) -> Result<Colour, Error> {
    for comp in &f.comps {
        if (f.hmax / comp.h) * comp.h != f.hmax || (f.vmax / comp.v) * comp.v != f.vmax {
            return Err(Error::Unsupported(format!(
                "fractional sampling ({}x{} against {}x{})",
                comp.h, comp.v, f.hmax, f.vmax
            )));
        }
    }
    Ok(match f.comps.len() {
        1 => Colour::Grey,
        3 => {
            let ids: Vec<u8> = f.comps.iter().map(|c| c.id).collect();
            if jfif {
                Colour::YCbCr
            } else if let Some(t) = adobe {
                if t == 0 {
                    Colour::Rgb
                } else {
                    Colour::YCbCr
                }
            } else if ids == [b'R', b'G', b'B'] {
                Colour::Rgb
            } else {
                Colour::YCbCr
            }
        }
        // libjpeg: Adobe transform 0 (or no Adobe marker) is CMYK, anything else YCCK.
        _ => match adobe {
            None | Some(0) => Colour::Cmyk,
            Some(_) => Colour::Ycck,
        },
    })
}

fn finish(
    mut f: Frame,
    jfif: bool,
    adobe: Option<u8>,
    sink: &mut dyn RowSink,
) -> Result<(), Error> {
    let colour = colour_of(&f, jfif, adobe)?;
    // Sample planes, one per component, `visible_blocks * 8` wide; each component's
    // coefficients are freed once its plane is made.
    let mut planes = Vec::with_capacity(f.comps.len());
    for comp in &mut f.comps {
        let (bw, bh) = comp.visible_blocks();
        let stride = bw * 8;
        let mut plane = vec![0u8; stride * bh * 8];
        let quant = comp.quant.unwrap_or([0; 64]);
        for by in 0..bh {
            for bx in 0..bw {
                let at = (by * comp.blocks_w + bx) * 64;
                let block: &[i16; 64] = comp.coefs[at..at + 64].try_into().unwrap();
                idct_block(
                    block,
                    &quant,
                    &mut plane[by * 8 * stride + bx * 8..],
                    stride,
                );
            }
        }
        planes.push(plane);
        comp.coefs = Vec::new();
    }
    let (w, h) = (f.width, f.height);
    let channels = if colour == Colour::Grey { 1 } else { 3 };
    sink.start(w, h, channels).map_err(Error::Refused)?;
    let mut out = vec![0u8; w * channels];
    let mut rows: Vec<Vec<u8>> = vec![vec![0u8; w * 2 + 16]; f.comps.len()];
    for y in 0..h {
        for (ci, comp) in f.comps.iter().enumerate() {
            // `colour_of` refused fractional sampling.
            let (hr, vr) = (f.hmax / comp.h, f.vmax / comp.v);
            let (plane, stride, dw) = (&planes[ci], comp.width.div_ceil(8) * 8, comp.width);
            upsample_row(
                comp,
                |r| &plane[r * stride..r * stride + dw],
                hr,
                vr,
                y,
                &mut rows[ci],
            );
        }
        convert_row(colour, &rows, &mut out, w);
        sink.row(&out);
    }
    Ok(())
}

/// Output row `y` of a component, upsampled by `hr` x `vr`, into `out[..width * hr]`;
/// `row(r)` is the component's sample row `r` (`width` samples).
fn upsample_row<'a>(
    comp: &Component,
    row: impl Fn(usize) -> &'a [u8],
    hr: usize,
    vr: usize,
    y: usize,
    out: &mut [u8],
) {
    let (dw, dh) = (comp.width, comp.height);
    let r = y / vr;
    // libjpeg filters 2:1 ratios (vertical 2:1 only, or any with more than 2 columns).
    let fancy_h = hr == 2 && dw > 2;
    let vertical = vr == 2 && (hr == 1 || fancy_h);
    if vertical {
        // Triangle filter in y: 3/4 of this row, 1/4 of the nearer neighbour.
        let near = if y.is_multiple_of(2) {
            r.saturating_sub(1)
        } else {
            (r + 1).min(dh - 1)
        };
        let (this, other) = (row(r), row(near));
        if hr == 1 {
            let bias = if y.is_multiple_of(2) { 1 } else { 2 };
            for x in 0..dw {
                out[x] = ((this[x] as u32 * 3 + other[x] as u32 + bias) >> 2) as u8;
            }
        } else {
            // Then in x on the column sums (scaled by 4), rounding +8 / +7 alternately.
            let sum = |x: usize| this[x] as i32 * 3 + other[x] as i32;
            let mut last = sum(0);
            let mut this_sum = last;
            for x in 0..dw {
                let next = if x + 1 < dw { sum(x + 1) } else { this_sum };
                let (left, right) = if x == 0 {
                    (this_sum * 4 + 8, this_sum * 3 + next + 7)
                } else if x + 1 == dw {
                    (this_sum * 3 + last + 8, this_sum * 4 + 7)
                } else {
                    (this_sum * 3 + last + 8, this_sum * 3 + next + 7)
                };
                out[2 * x] = (left >> 4) as u8;
                out[2 * x + 1] = (right >> 4) as u8;
                last = this_sum;
                this_sum = next;
            }
        }
        return;
    }
    let src = row(r);
    if hr == 2 && vr == 1 && fancy_h {
        let s = |x: usize| src[x] as u32;
        out[0] = src[0];
        out[1] = ((s(0) * 3 + s(1) + 2) >> 2) as u8;
        for x in 1..dw - 1 {
            out[2 * x] = ((s(x) * 3 + s(x - 1) + 1) >> 2) as u8;
            out[2 * x + 1] = ((s(x) * 3 + s(x + 1) + 2) >> 2) as u8;
        }
        out[2 * dw - 2] = ((s(dw - 1) * 3 + s(dw - 2) + 1) >> 2) as u8;
        out[2 * dw - 1] = src[dw - 1];
        return;
    }
    // Replication (including 1:1).
    if hr == 1 {
        out[..dw].copy_from_slice(src);
    } else {
        for (o, &v) in out.chunks_exact_mut(hr).zip(src) {
            o.fill(v);
        }
    }
}

/// A baseline image decoded as it streams: after each MCU row its blocks are
/// transformed into a ring of three bands of sample rows per component, and the output
/// rows of the previous band (whose upsampling may read one row of the next) go to the
/// sink. Only one MCU row of coefficients and three of samples are ever held.
pub(crate) struct Streamer<'s> {
    sink: &'s mut dyn RowSink,
    colour: Colour,
    /// Per component: its ring (3 bands of `band_rows` rows, `stride` wide).
    rings: Vec<Vec<u8>>,
    band_rows: Vec<usize>,
    strides: Vec<usize>,
    rows: Vec<Vec<u8>>,
    out: Vec<u8>,
}

impl<'s> Streamer<'s> {
    fn new(f: &Frame, colour: Colour, sink: &'s mut dyn RowSink) -> Result<Self, Error> {
        let channels = if colour == Colour::Grey { 1 } else { 3 };
        sink.start(f.width, f.height, channels)
            .map_err(Error::Refused)?;
        let strides: Vec<usize> = f.comps.iter().map(|c| c.width.div_ceil(8) * 8).collect();
        let band_rows: Vec<usize> = f.comps.iter().map(|c| c.v * 8).collect();
        Ok(Streamer {
            sink,
            colour,
            rings: strides
                .iter()
                .zip(&band_rows)
                .map(|(s, b)| vec![0u8; 3 * b * s])
                .collect(),
            band_rows,
            strides,
            rows: vec![vec![0u8; f.width * 2 + 16]; f.comps.len()],
            out: vec![0u8; f.width * channels],
        })
    }

    /// MCU row `m` was decoded: its samples into the ring, then band `m - 1`'s rows out.
    fn band(&mut self, f: &Frame, m: usize) -> Result<(), Error> {
        for (ci, comp) in f.comps.iter().enumerate() {
            let (bw, bh) = comp.visible_blocks();
            let (stride, band) = (self.strides[ci], self.band_rows[ci]);
            let quant = comp.quant.unwrap_or([0; 64]);
            let ring = &mut self.rings[ci];
            let base = (m % 3) * band * stride;
            for by in m * comp.v..((m + 1) * comp.v).min(bh) {
                let local = by - comp.row0;
                for bx in 0..bw {
                    let at = (local * comp.blocks_w + bx) * 64;
                    let block: &[i16; 64] = comp.coefs[at..at + 64]
                        .try_into()
                        .map_err(|_| Error::Corrupt("coefficient block out of range".into()))?;
                    let row = (by - m * comp.v) * 8;
                    idct_block(
                        block,
                        &quant,
                        &mut ring[base + row * stride + bx * 8..],
                        stride,
                    );
                }
            }
        }
        if m > 0 {
            self.emit(f, m - 1);
        }
        Ok(())
    }

    /// After the last MCU row: its band's rows.
    fn finish(&mut self, f: &Frame) -> Result<(), Error> {
        if f.mcus_y > 0 {
            self.emit(f, f.mcus_y - 1);
        }
        Ok(())
    }

    /// The output rows of MCU row `m` (the ring holds bands `m - 1` to `m + 1`).
    fn emit(&mut self, f: &Frame, m: usize) {
        let rows_per_mcu = f.vmax * 8;
        let (first, end) = (m * rows_per_mcu, ((m + 1) * rows_per_mcu).min(f.height));
        for y in first..end {
            for (ci, comp) in f.comps.iter().enumerate() {
                let (hr, vr) = (f.hmax / comp.h, f.vmax / comp.v);
                let (ring, stride, band, dw) = (
                    &self.rings[ci],
                    self.strides[ci],
                    self.band_rows[ci],
                    comp.width,
                );
                let row = |r: usize| {
                    let at = ((r / band) % 3 * band + r % band) * stride;
                    &ring[at..at + dw]
                };
                upsample_row(comp, row, hr, vr, y, &mut self.rows[ci]);
            }
            convert_row(self.colour, &self.rows, &mut self.out, f.width);
            self.sink.row(&self.out);
        }
    }
}

/// libjpeg's YCbCr to RGB factors in 16-bit fixed point.
const fn fix16(x: f64) -> i32 {
    (x * 65536.0 + 0.5) as i32
}
const ONE_HALF: i32 = 1 << 15;

#[inline(always)]
fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (y as i32, cb as i32 - 128, cr as i32 - 128);
    let r = y + ((fix16(1.40200) * cr + ONE_HALF) >> 16);
    let g = y + ((-fix16(0.34414) * cb - fix16(0.71414) * cr + ONE_HALF) >> 16);
    let b = y + ((fix16(1.77200) * cb + ONE_HALF) >> 16);
    [r, g, b].map(|v| v.clamp(0, 255) as u8)
}

/// PIL's CMYK to RGB on the inverted samples PIL reads from an Adobe CMYK JPEG
/// (`CMYK;I`): `x = nk - x * nk / 255` with `nk = 255 - k`, rounded by its MULDIV255.
#[inline(always)]
fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = k as i32; // 255 - (255 - k)
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(255 - v as i32, nk)).clamp(0, 255) as u8)
}

fn convert_row(colour: Colour, rows: &[Vec<u8>], out: &mut [u8], w: usize) {
    match colour {
        Colour::Grey => out.copy_from_slice(&rows[0][..w]),
        Colour::Rgb => {
            for (x, px) in out.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&[rows[0][x], rows[1][x], rows[2][x]]);
            }
        }
        Colour::YCbCr => {
            let (y, cb, cr) = (&rows[0][..w], &rows[1][..w], &rows[2][..w]);
            for (px, ((&y, &cb), &cr)) in out.chunks_exact_mut(3).zip(y.iter().zip(cb).zip(cr)) {
                px.copy_from_slice(&ycc_to_rgb(y, cb, cr));
            }
        }
        Colour::Cmyk => {
            for (x, px) in out.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&cmyk_to_rgb(rows[0][x], rows[1][x], rows[2][x], rows[3][x]));
            }
        }
        Colour::Ycck => {
            for (x, px) in out.chunks_exact_mut(3).enumerate() {
                // libjpeg: YCC to RGB, inverted, gives CMY; K passes through.
                let [r, g, b] = ycc_to_rgb(rows[0][x], rows[1][x], rows[2][x]);
                px.copy_from_slice(&cmyk_to_rgb(255 - r, 255 - g, 255 - b, rows[3][x]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_order_is_the_standards() {
        assert_eq!(&NATURAL[..10], &[0, 1, 8, 16, 9, 2, 3, 10, 17, 24]);
        assert_eq!(&NATURAL[58..64], &[61, 54, 47, 55, 62, 63]);
        let mut seen = [false; 64];
        for &n in &NATURAL[..64] {
            assert!(!seen[n as usize], "{n} twice");
            seen[n as usize] = true;
        }
        assert!(NATURAL[64..].iter().all(|&n| n == 63));
    }

    #[test]
    fn huffman_tables_with_too_many_codes_are_refused() {
        // Three 1-bit codes cannot exist; a mutated file once made the table builder
        // index past its look-up table.
        let mut counts = [0u8; 16];
        counts[0] = 3;
        assert!(matches!(
            Huffman::new(&counts, &[1, 2, 3]),
            Err(Error::Corrupt(_))
        ));
        // Two 1-bit codes use every code: no 10-bit code is left.
        counts[0] = 2;
        counts[9] = 1;
        assert!(Huffman::new(&counts, &[1, 2, 3]).is_err());
        // The standard's tables are valid.
        assert!(Huffman::new(&STD_AC_COUNTS[0], &STD_AC_VALUES[0]).is_ok());
    }

    #[test]
    fn fixed_point_factors_are_libjpegs() {
        // The values libjpeg's FIX macros give (jidctint.c, jdcolor.c).
        assert_eq!(
            [F_0_298631336, F_0_541196100, F_1_175875602, F_3_072711026],
            [2446, 4433, 9633, 25172]
        );
        assert_eq!(
            [
                fix16(1.40200),
                fix16(0.34414),
                fix16(0.71414),
                fix16(1.77200)
            ],
            [91881, 22554, 46802, 116130]
        );
    }
}
