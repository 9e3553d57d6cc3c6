//! Progress of a push: a bar per blob on a terminal, plain lines otherwise (CI logs, pipes).

use std::io::Write;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
#[derive(Clone)]
pub enum Reporter {
    /// Bars on stderr (a terminal).
    Bars(MultiProgress),
    /// One line per event on stderr.
    Plain,
}

impl Reporter {
    /// Bars when stderr is a terminal, else plain lines.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Reporter::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Reporter::Plain
        }
    }

    /// A message between the bars.
    pub fn note(&self, message: &str) {
        match self {
            Reporter::Bars(m) => {
                let _ = m.println(message);
            }
            Reporter::Plain => {
                let _ = writeln!(std::io::stderr(), "{message}");
            }
        }
    }

    pub fn blob(&self, kind: &str, digest: &str, size: u64) -> BlobProgress {
        let label = format!("{kind} {} ({})", short(digest), HumanBytes(size));
        match self {
            Reporter::Bars(m) => {
                let bar = m.add(ProgressBar::new(size));
                // The template is a constant; a bad one is a defect caught by any terminal run.
                let style = ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(label.clone());
                BlobProgress {
                    label,
                    bar: Some(bar),
                    reporter: self.clone(),
                }
            }
            Reporter::Plain => BlobProgress {
                label,
                bar: None,
                reporter: self.clone(),
            },
        }
    }
}

/// Progress of one blob. Cloned into the upload stream.
#[derive(Clone)]
pub struct BlobProgress {
    label: String,
    bar: Option<ProgressBar>,
    reporter: Reporter,
}

impl BlobProgress {
    pub fn started(&self) {
        match &self.bar {
            Some(bar) => bar.set_message("pushing"),
            None => self.reporter.note(&format!("{}: pushing", self.label)),
        }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    /// The upload starts over (after a credential renewal).
    pub fn restart(&self) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(0);
                bar.set_message("retrying");
            }
            None => self.reporter.note(&format!("{}: retrying", self.label)),
        }
    }

    pub fn skipped(&self) {
        self.finish("already in the registry, skipped");
    }

    pub fn pushed(&self) {
        self.finish("pushed");
    }

    fn finish(&self, what: &str) {
        match &self.bar {
            Some(bar) => {
                if let Some(len) = bar.length() {
                    bar.set_position(len);
                }
                bar.finish_with_message(what.to_owned());
            }
            None => self.reporter.note(&format!("{}: {what}", self.label)),
        }
    }
}

/// `sha256:0123456789abcdef...` -> `sha256:0123456789ab`.
pub fn short(digest: &str) -> &str {
    let end = digest
        .find(':')
        .map(|i| i + 13)
        .unwrap_or(12)
        .min(digest.len());
    digest.get(..end).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_digests() {
        assert_eq!(
            super::short("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
        assert_eq!(super::short("sha256:01"), "sha256:01");
    }
}
