//! `autoglm model list|pull|rm|info`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use autoglm_gguf::GgufFile;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Catalogue models and what is in the local cache.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Download and verify a model (catalogue name or hf:OWNER/REPO/FILE.gguf).
    Pull { name: String },
    /// Remove a model from the cache.
    Rm { name: String },
    /// Architecture, quantisation, parameters, context length, chat template of a model.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    let hub = super::hub()?;
    match cmd {
        ModelCommand::List { json } => {
            let models = hub.list()?;
            if json {
                let v: Vec<_> = models
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.name, "pulled": m.pulled, "path": m.path,
                            "size_bytes": m.size_bytes, "description": m.description,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for m in models {
                    let state = match m.size_bytes {
                        Some(b) if m.pulled => format!("{:.1} MB", b as f64 / 1e6),
                        _ => "not pulled".to_string(),
                    };
                    println!("{:<16} {:<12} {}", m.name, state, m.description);
                }
            }
        }
        ModelCommand::Pull { name } => {
            let path = hub.pull(&name, &mut |line| eprintln!("{line}"))?;
            println!("{}", path.display());
        }
        ModelCommand::Rm { name } => {
            if hub.remove(&name)? {
                eprintln!("removed {name}");
            } else {
                eprintln!("{name} was not in the cache");
            }
        }
        ModelCommand::Info { name, json } => {
            let path = super::resolve(&name)?;
            let file =
                GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
            let info = info(&file);
            if json {
                let mut obj = serde_json::to_value(&info)?;
                obj["name"] = name.clone().into();
                obj["path"] = path.display().to_string().into();
                println!("{obj}");
            } else {
                println!("name:            {name}");
                println!("path:            {}", path.display());
                println!("architecture:    {}", info.architecture);
                println!("quantization:    {}", info.quantization);
                println!(
                    "parameters:      {} ({:.1} M)",
                    info.parameters,
                    info.parameters as f64 / 1e6
                );
                println!(
                    "context length:  {}",
                    info.context_length
                        .map_or("unknown".into(), |c| c.to_string())
                );
                println!(
                    "chat template:   {}",
                    if info.chat_template { "yes" } else { "no" }
                );
                println!("file size:       {:.1} MB", info.file_size as f64 / 1e6);
                let types: Vec<String> = info
                    .tensor_types
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect();
                println!("tensor types:    {}", types.join(", "));
            }
        }
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct Info {
    architecture: String,
    quantization: String,
    parameters: u64,
    context_length: Option<u64>,
    chat_template: bool,
    file_size: u64,
    tensor_types: BTreeMap<String, usize>,
    gguf_version: u32,
}

fn info(file: &GgufFile) -> Info {
    let arch = file.architecture().unwrap_or("unknown").to_string();
    let mut tensor_types = BTreeMap::new();
    for t in file.tensors() {
        *tensor_types.entry(t.dtype.name().to_string()).or_insert(0) += 1;
    }
    Info {
        quantization: file
            .get_u64_opt("general.file_type")
            .ok()
            .flatten()
            .map_or_else(|| "unknown".to_string(), file_type_name),
        context_length: file
            .get_u64_opt(&format!("{arch}.context_length"))
            .ok()
            .flatten(),
        chat_template: file.get("tokenizer.chat_template").is_some(),
        parameters: file.parameter_count(),
        file_size: file.file_size(),
        gguf_version: file.version(),
        tensor_types,
        architecture: arch,
    }
}

/// llama.cpp's `llama_ftype` names for `general.file_type`.
fn file_type_name(ft: u64) -> String {
    let name = match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        other => return format!("file type {other}"),
    };
    name.to_string()
}
