//! Stop strings over a token stream. Text is released only once it can no longer be the start of
//! a stop string, so a caller streaming the output never shows part of a stop sequence.

/// Accumulates decoded text and decides what may be emitted.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Decoded text not yet released.
    pending: String,
}

/// What happened after feeding text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit now (may be empty).
    Continue(String),
    /// A stop string was found: emit this final text (everything before the stop) and end.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops,
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome::Continue(std::mem::take(&mut self.pending));
        }
        // Earliest occurrence of any stop string ends the output.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stopped(out);
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > hold && self.pending.ends_with(&s[..i]) {
                    hold = i;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// Ends the stream with a last piece of text (the decoder's flushed tail): what is still
    /// held back is released unless the tail completes a stop string.
    pub fn close(&mut self, tail: &str) -> String {
        match self.push(tail) {
            StopOutcome::Stopped(t) => t,
            StopOutcome::Continue(t) => t + &self.finish(),
        }
    }

    /// Releases whatever is held back (generation ended for another reason).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds pieces and returns (emitted text joined with '|' per push, stopped?).
    fn check(stops: &[&str], pieces: &[&str], expect: &str, expect_stopped: bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        let mut stopped = false;
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push(t),
                StopOutcome::Stopped(t) => {
                    out.push(t);
                    stopped = true;
                    break;
                }
            }
        }
        if !stopped {
            out.push(m.finish());
        }
        assert_eq!(out.join("|"), expect, "stops {stops:?} pieces {pieces:?}");
        assert_eq!(stopped, expect_stopped);
    }

    #[test]
    fn stop_strings() {
        check(&[], &["a", "b"], "a|b|", false);
        check(&["END"], &["hello ", "wor", "ld"], "hello |wor|ld|", false);
        check(&["END"], &["hello E", "N", "D more"], "hello ||", true);
        check(&["END"], &["hello E", "x"], "hello |Ex|", false);
        check(&["\n\n"], &["line\n", "\nnext"], "line|", true);
        check(&["ab", "b"], &["xab"], "x", true);
        check(&["é!"], &["caf", "é", "!"], "caf||", true);
        // A held prefix that turns out not to be a stop is released at the end.
        check(&["STOP"], &["go ST"], "go |ST", false);
    }
}
