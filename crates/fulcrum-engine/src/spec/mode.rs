//! `--spec` values: which drafter a generation uses.

use super::controller::GAMMA_MAX;
use std::str::FromStr;

/// Draft length of prompt lookup where it cannot adapt (the server).
pub const LOOKUP_GAMMA: usize = 8;
/// Default draft length of a draft model.
pub const DRAFT_GAMMA: usize = 4;

/// How a generation speculates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecMode {
    /// Plain decoding, one token per forward pass.
    Off,
    /// Prompt lookup: `gamma` tokens per round, or (`None`) as many as the controller expects to pay, none when
    /// drafting does not pay.
    Lookup { gamma: Option<usize> },
    /// A draft model (a name or a path), `gamma` tokens per round.
    Draft { model: String, gamma: usize },
    /// The target's first `exit` layers draft `gamma` tokens per round (LayerSkip's static setting).
    EarlyExit { exit: usize, gamma: usize },
    /// A static exit whose length follows the γ±1 rule: one longer after a fully accepted draft, one shorter otherwise.
    ExitFsm { exit: usize },
    /// DEL: the exit layer and length chosen per round from decayed acceptance, drafting stopped by confidence.
    Del,
    /// Every drafter available (early exits, prompt lookup, the draft model if one is given), chosen per round by
    /// expected tokens per second.
    Auto,
}

impl SpecMode {
    /// The draft model this mode names, if any.
    pub fn draft_model(&self) -> Option<&str> {
        match self {
            SpecMode::Draft { model, .. } => Some(model),
            _ => None,
        }
    }
}

impl std::fmt::Display for SpecMode {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            SpecMode::Off => write!(f, "off"),
            SpecMode::Lookup { gamma: None } => write!(f, "lookup"),
            SpecMode::Lookup { gamma: Some(gamma) } => write!(f, "lookup:{gamma}"),
            SpecMode::Draft { model, gamma } => write!(f, "draft:{model},{gamma}"),
            SpecMode::EarlyExit { exit, gamma } => write!(f, "early-exit:{exit},{gamma}"),
            SpecMode::ExitFsm { exit } => write!(f, "exit-fsm:{exit}"),
            SpecMode::Del => write!(f, "del"),
            SpecMode::Auto => write!(f, "auto"),
        }
    }
}

/// The accepted spellings, for error messages.
pub const SPEC_SYNTAX: &str =
    "off, lookup[:γ], draft:MODEL[,γ], early-exit:E,γ, exit-fsm:E, del or auto";

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

impl FromStr for SpecMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SpecMode, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let mode = match (name, arg) {
            ("off", None) => SpecMode::Off,
            ("del", None) => SpecMode::Del,
            ("auto", None) => SpecMode::Auto,
            ("lookup", None) => SpecMode::Lookup { gamma: None },
            ("lookup", Some(g)) => SpecMode::Lookup {
                gamma: Some(parse_gamma(g)?),
            },
            ("draft", Some(rest)) => {
                // A path may hold commas; only a trailing ",<number>" is a length.
                let (model, gamma) = match rest.rsplit_once(',') {
                    Some((m, g)) if g.trim().parse::<usize>().is_ok() => (m, parse_gamma(g)?),
                    _ => (rest, DRAFT_GAMMA),
                };
                if model.is_empty() {
                    return Err("draft: needs a model name or path, as in draft:MODEL".into());
                }
                SpecMode::Draft {
                    model: model.to_string(),
                    gamma,
                }
            }
            ("early-exit", Some(rest)) => {
                let Some((e, g)) = rest.split_once(',') else {
                    return Err(
                        "early-exit needs an exit layer and a length, as in early-exit:8,4".into(),
                    );
                };
                SpecMode::EarlyExit {
                    exit: parse_exit(e)?,
                    gamma: parse_gamma(g)?,
                }
            }
            ("exit-fsm", Some(e)) => SpecMode::ExitFsm {
                exit: parse_exit(e)?,
            },
            _ => return Err(format!("unknown --spec {s:?}; use {SPEC_SYNTAX}")),
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
            "draft:qwen2.5-coder-0.5b-instruct,4",
            "early-exit:8,4",
            "exit-fsm:12",
            "del",
            "auto",
        ] {
            let mode: SpecMode = s.parse().unwrap();
            assert_eq!(mode.to_string(), s);
        }
        assert_eq!(
            "draft:/m/a,b.gguf".parse::<SpecMode>().unwrap(),
            SpecMode::Draft {
                model: "/m/a,b.gguf".into(),
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
            let err = s.parse::<SpecMode>().unwrap_err();
            assert!(!err.is_empty(), "{s}");
        }
    }
}
