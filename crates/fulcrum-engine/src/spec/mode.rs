//! `--spec` values: which drafter a generation uses. One type, parsed once (`FromStr`), checked against the model
//! once ([`Speculation::check`]), for `generate`, `chat`, `bench spec`, `serve`'s flag and its requests' `"spec"`.

use super::controller::GAMMA_MAX;
use super::error::SpecError;
use std::str::FromStr;

/// Default draft length of a draft model.
pub const DRAFT_GAMMA: usize = 4;

/// How a generation speculates.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Speculation {
    /// Plain decoding, one token per forward pass.
    #[default]
    Off,
    /// Prompt lookup: `gamma` tokens per round, or (`None`) as many as the controller expects to pay, none when
    /// drafting does not pay.
    Lookup { gamma: Option<usize> },
    /// A draft model, `gamma` tokens per round: the one named (a name or a path), or (`None`) the one loaded beside
    /// the target (`serve --draft-model`, `generate --draft`).
    Draft { model: Option<String>, gamma: usize },
    /// The target's first `exit` layers draft `gamma` tokens per round (LayerSkip's static setting).
    EarlyExit { exit: usize, gamma: usize },
    /// A static exit whose length follows the γ±1 rule: one longer after a fully accepted draft, one shorter otherwise.
    ExitFsm { exit: usize },
    /// DEL: the exit layer and length chosen per round from decayed acceptance, drafting stopped by confidence.
    Del,
    /// Every drafter available (early exits, prompt lookup, the draft model if one is loaded), chosen per round by
    /// expected tokens per second.
    Auto,
}

impl Speculation {
    /// The draft model this mode names, if any.
    pub fn draft_model(&self) -> Option<&str> {
        match self {
            Speculation::Draft { model, .. } => model.as_deref(),
            _ => None,
        }
    }

    /// Whether this mode cannot run without a draft model.
    pub fn needs_draft_model(&self) -> bool {
        matches!(self, Speculation::Draft { .. })
    }

    /// Whether this mode drafts with a draft model when one is loaded.
    pub fn uses_draft_model(&self) -> bool {
        matches!(self, Speculation::Draft { .. } | Speculation::Auto)
    }

    /// The fixed exit layer of this mode, if it has one.
    pub fn exit(&self) -> Option<usize> {
        match self {
            Speculation::EarlyExit { exit, .. } | Speculation::ExitFsm { exit } => Some(*exit),
            _ => None,
        }
    }

    /// Checks this mode against a model of `n_layers` layers: an exit must leave at least one layer to verify with.
    pub fn check(&self, n_layers: usize) -> Result<(), SpecError> {
        check_exit(self.exit(), n_layers)
    }
}

/// Checks that `exit`, if given, is a layer boundary strictly inside an `n_layers`-layer model.
pub fn check_exit(exit: Option<usize>, n_layers: usize) -> Result<(), SpecError> {
    match exit {
        Some(exit) if exit == 0 || exit >= n_layers => {
            Err(SpecError::ExitOutOfRange { exit, n_layers })
        }
        _ => Ok(()),
    }
}

impl std::fmt::Display for Speculation {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Speculation::Off => write!(f, "off"),
            Speculation::Lookup { gamma: None } => write!(f, "lookup"),
            Speculation::Lookup { gamma: Some(gamma) } => write!(f, "lookup:{gamma}"),
            Speculation::Draft { model: None, .. } => write!(f, "draft"),
            Speculation::Draft {
                model: Some(model),
                gamma,
            } => write!(f, "draft:{model},{gamma}"),
            Speculation::EarlyExit { exit, gamma } => write!(f, "early-exit:{exit},{gamma}"),
            Speculation::ExitFsm { exit } => write!(f, "exit-fsm:{exit}"),
            Speculation::Del => write!(f, "del"),
            Speculation::Auto => write!(f, "auto"),
        }
    }
}

/// The accepted spellings, for error messages.
pub const SPEC_SYNTAX: &str =
    "off, lookup[:γ], draft[:MODEL[,γ]], early-exit:E,γ, exit-fsm:E, del or auto";

fn parse_gamma(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(g) if (1..=GAMMA_MAX).contains(&g) => Ok(g),
        _ => Err(format!(
            "draft length {s:?} must be a whole number from 1 to {GAMMA_MAX}"
        )),
    }
}

fn parse_exit(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(e) if e >= 1 => Ok(e),
        _ => Err(format!(
            "exit layer {s:?} must be a whole number of layers, at least 1"
        )),
    }
}

impl FromStr for Speculation {
    type Err = String;

    fn from_str(s: &str) -> Result<Speculation, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let mode = match (name, arg) {
            ("off", None) => Speculation::Off,
            ("del", None) => Speculation::Del,
            ("auto", None) => Speculation::Auto,
            ("lookup", None) => Speculation::Lookup { gamma: None },
            ("lookup", Some(g)) => Speculation::Lookup {
                gamma: Some(parse_gamma(g)?),
            },
            ("draft", None) => Speculation::Draft {
                model: None,
                gamma: DRAFT_GAMMA,
            },
            ("draft", Some(rest)) => {
                // A path may hold commas; only a trailing ",<number>" is a length.
                let (model, gamma) = match rest.rsplit_once(',') {
                    Some((m, g)) if g.trim().parse::<usize>().is_ok() => (m, parse_gamma(g)?),
                    _ => (rest, DRAFT_GAMMA),
                };
                if model.is_empty() {
                    return Err(
                        "draft: needs a model name or path, as in draft:MODEL (or plain draft)"
                            .into(),
                    );
                }
                Speculation::Draft {
                    model: Some(model.to_string()),
                    gamma,
                }
            }
            ("early-exit", Some(rest)) => {
                let Some((e, g)) = rest.split_once(',') else {
                    return Err(
                        "early-exit needs an exit layer and a length, as in early-exit:8,4".into(),
                    );
                };
                Speculation::EarlyExit {
                    exit: parse_exit(e)?,
                    gamma: parse_gamma(g)?,
                }
            }
            ("exit-fsm", Some(e)) => Speculation::ExitFsm {
                exit: parse_exit(e)?,
            },
            _ => return Err(format!("unknown speculation {s:?}; use {SPEC_SYNTAX}")),
        };
        Ok(mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_round_trips() {
        for s in [
            "off",
            "lookup",
            "lookup:8",
            "draft",
            "draft:qwen2.5-coder-0.5b-instruct,4",
            "early-exit:8,4",
            "exit-fsm:12",
            "del",
            "auto",
        ] {
            let mode: Speculation = s.parse().unwrap();
            assert_eq!(mode.to_string(), s);
        }
        assert_eq!(
            "draft:/m/a,b.gguf".parse::<Speculation>().unwrap(),
            Speculation::Draft {
                model: Some("/m/a,b.gguf".into()),
                gamma: DRAFT_GAMMA
            }
        );
    }

    #[test]
    fn rejects_bad_values_with_a_message() {
        for s in [
            "",
            "on",
            "draft:",
            "early-exit:8",
            "early-exit:0,4",
            "early-exit:8,0",
            "early-exit:8,99",
            "lookup:x",
            "del:3",
        ] {
            let err = s.parse::<Speculation>().unwrap_err();
            assert!(!err.is_empty(), "{s}");
        }
    }

    #[test]
    fn exits_are_checked_against_the_model() {
        let exit = |s: &str| s.parse::<Speculation>().unwrap().check(24);
        assert!(exit("early-exit:23,4").is_ok());
        assert!(exit("exit-fsm:12").is_ok());
        let err = exit("early-exit:24,4").unwrap_err().to_string();
        assert!(err.contains("from 1 to 23"), "{err}");
        assert!(exit("exit-fsm:30").is_err());
        assert!(exit("del").is_ok());
    }
}
