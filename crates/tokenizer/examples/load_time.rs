//! Prints how long `Tokenizer::from_gguf` takes on a GGUF file: `cargo run --release --example
//! load_time -- model.gguf`.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: load_time <model.gguf>")?;
    let t = Instant::now();
    let file = autoglm_gguf::GgufFile::open(&path)?;
    println!("open: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    let mut tok = None;
    for _ in 0..5 {
        let t = Instant::now();
        let loaded = autoglm_tokenizer::Tokenizer::from_gguf(&file)?;
        println!(
            "from_gguf: {:.2} ms ({} tokens)",
            t.elapsed().as_secs_f64() * 1e3,
            loaded.vocab_size()
        );
        tok = Some(loaded);
    }
    if let Some(tok) = tok {
        let name = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("-");
        println!(
            "model {} pre {:?}: bos {:?} {:?}, eos {:?} {:?}, add_bos {}",
            tok.model_name(),
            tok.pre_tokenizer_name(),
            tok.bos_id(),
            name(tok.bos_id()),
            tok.eos_id(),
            name(tok.eos_id()),
            tok.add_bos()
        );
        let stops: Vec<(u32, &str)> = tok
            .stop_ids()
            .iter()
            .map(|&id| (id, tok.token_text(id).unwrap_or("")))
            .collect();
        println!("stop ids: {stops:?}");
        for w in tok.warnings() {
            println!("warning: {w}");
        }
    }
    Ok(())
}
