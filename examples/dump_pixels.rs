fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).unwrap();
    let img = gemma_batch::prepare::image::decode(&bytes, "x", u64::MAX).unwrap().to_rgb8();
    std::fs::write(&args[2], img.as_raw()).unwrap();
    eprintln!("{}x{}", img.width(), img.height());
}
