//! GPU model names as words, so a task's `gpu_models` ask matches whole words of a GPU's name.
//!
//! A substring match let "A10" take an "NVIDIA A100 80GB". Names are split into words on every
//! character that is not a letter or a digit (space, '-', '_', '/', ...) and lowercased, and an
//! ask matches a name when its words appear in the name consecutively: "A100" matches
//! "NVIDIA A100-SXM4-80GB", "a100 80gb" matches "NVIDIA A100 80GB", "RTX 4090" matches
//! "NVIDIA GeForce RTX 4090"; "A10" matches none of them. Both sides are kept as their words
//! joined by single spaces, so a match is one substring search plus a check of its two ends.

/// `name` as lowercase words joined by single spaces ("NVIDIA A100-SXM4-80GB" -> "nvidia a100
/// sxm4 80gb"); "" if it has no letters or digits.
pub fn words(name: &str) -> String {
    name.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the words of `ask` appear consecutively in `name`, both given as [`words`]. An ask
/// without words matches nothing.
pub fn matches(name: &str, ask: &str) -> bool {
    if ask.is_empty() {
        return false;
    }
    let bytes = name.as_bytes();
    name.match_indices(ask).any(|(at, _)| {
        let end = at + ask.len();
        (at == 0 || bytes[at - 1] == b' ') && (end == bytes.len() || bytes[end] == b' ')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fits(name: &str, ask: &str) -> bool {
        matches(&words(name), &words(ask))
    }

    #[test]
    fn an_ask_matches_whole_words_of_the_name() {
        assert!(fits("NVIDIA A100-SXM4-80GB", "A100"));
        assert!(fits("NVIDIA A100 80GB", "a100"));
        assert!(!fits("NVIDIA A100 80GB", "A10"), "A10 is not A100");
        assert!(!fits("NVIDIA A100-SXM4-80GB", "A10"));
        assert!(fits("NVIDIA A10", "A10"));
        assert!(!fits("NVIDIA A10G", "A10"));
        assert!(!fits("NVIDIA H100 80GB HBM3", "H10"));
        assert!(fits("NVIDIA_H100_NVL", "h100"));
    }

    #[test]
    fn a_multi_word_ask_matches_consecutive_words() {
        assert!(fits("NVIDIA A100 80GB", "A100 80GB"));
        assert!(fits("NVIDIA A100 80GB", "a100-80gb"));
        assert!(fits("NVIDIA GeForce RTX 4090", "RTX 4090"));
        assert!(fits("NVIDIA GeForce RTX 4090", "geforce rtx"));
        assert!(
            !fits("NVIDIA A100-SXM4-80GB", "A100 80GB"),
            "not consecutive"
        );
        assert!(
            !fits("NVIDIA GeForce RTX 4090", "4090 RTX"),
            "order matters"
        );
        assert!(!fits("NVIDIA GeForce RTX 4090 D", "RTX 409"));
    }

    #[test]
    fn an_ask_without_words_matches_nothing() {
        assert_eq!(words(" -_/ "), "");
        assert!(!fits("NVIDIA A100", "-"));
        assert!(!fits("", ""));
    }
}
