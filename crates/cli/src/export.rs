//! `resnet export-folder`: a data set written out as an image folder
//! (`DIR/{train,test}/<class>/<n>.png`), to try the image-folder path (fine-tuning,
//! `classify`, `eval`) on data that ships with the crate.

use std::path::Path;

use resnet::data::{DataSpec, Dataset};

/// Writes every image of the data set's training and test splits as an 8-bit PNG
/// (grey when its three channels are equal). Refuses a folder that already holds a
/// `train` or `test` sub-folder.
pub fn export_folder(data: &DataSpec, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    for split in ["train", "test"] {
        if out.join(split).exists() {
            return Err(format!(
                "{} already exists: give an empty or new folder",
                out.join(split).display()
            )
            .into());
        }
    }
    let split = data.load()?;
    let mut written = 0usize;
    for (name, set) in [("train", &split.train), ("test", &split.test)] {
        written += write_set(set, &out.join(name))?;
    }
    crate::emit(&format!(
        "wrote {written} images of {} classes ({} training, {} test) to {}",
        split.train.classes.len(),
        split.train.len(),
        split.test.len(),
        out.display()
    ))?;
    Ok(())
}

fn write_set(set: &Dataset, dir: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    let [c, h, w] = set.shape;
    if c != 3 {
        return Err(format!("{c}-channel images: only 3-channel sets are exported").into());
    }
    for class in &set.classes {
        std::fs::create_dir_all(dir.join(class)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let plane = h * w;
    for i in 0..set.len() {
        let img = set.image(i);
        let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        let grey = (0..plane).all(|p| img[p] == img[plane + p] && img[p] == img[2 * plane + p]);
        let (pixels, colour) = if grey {
            (
                img[..plane].iter().map(|&v| byte(v)).collect::<Vec<u8>>(),
                png::ColorType::Grayscale,
            )
        } else {
            let rgb = (0..plane)
                .flat_map(|p| [byte(img[p]), byte(img[plane + p]), byte(img[2 * plane + p])])
                .collect();
            (rgb, png::ColorType::Rgb)
        };
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
            enc.set_color(colour);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header()?.write_image_data(&pixels)?;
        }
        let path = dir
            .join(&set.classes[set.labels[i]])
            .join(format!("{i:05}.png"));
        resnet::weights::write_atomic(&path, &bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(set.len())
}
