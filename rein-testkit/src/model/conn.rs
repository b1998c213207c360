//! New-connection buckets the textbook way: a count of tokens, taken one per connection.
//!
//! - Rate form: the bucket holds up to `burst` tokens and gains one every `cost_ns`,
//!   continuously. Kept exactly as token-nanoseconds (tokens × `cost_ns`), so a partial
//!   token is never rounded.
//! - Fill form: the bucket starts with `max_tokens` and gains `tokens_per_fill` at each
//!   boundary `anchor_ns + k × fill_ns`, never more than `max_tokens`.
//!
//! Nothing here knows how the kernel packs its state (`rein_common::conn`).

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnBucketModel {
    Rate {
        cost_ns: u64,
        burst: u64,
        /// Tokens held, × `cost_ns`.
        token_ns: u128,
        /// When `token_ns` was last brought up to date.
        at_ns: u64,
    },
    Fill {
        anchor_ns: u64,
        fill_ns: u64,
        max_tokens: u64,
        tokens_per_fill: u64,
        tokens: u64,
        /// The boundary `tokens` counts fills up to.
        filled_to: u64,
    },
}

impl ConnBucketModel {
    /// A full rate-form bucket: `burst` connections at once, then one per `cost_ns`.
    pub fn rate(cost_ns: u64, burst: u64) -> Self {
        Self::Rate {
            cost_ns,
            burst,
            token_ns: u128::from(burst) * u128::from(cost_ns),
            at_ns: 0,
        }
    }

    /// A full fill-form bucket.
    pub fn fill(anchor_ns: u64, fill_ns: u64, max_tokens: u64, tokens_per_fill: u64) -> Self {
        Self::Fill {
            anchor_ns,
            fill_ns,
            max_tokens,
            tokens_per_fill,
            tokens: max_tokens,
            filled_to: 0,
        }
    }

    /// Brings the bucket up to `now` (time never goes back for it).
    fn refill(&mut self, now: u64) {
        match self {
            Self::Rate {
                cost_ns,
                burst,
                token_ns,
                at_ns,
            } => {
                if now > *at_ns {
                    let full = u128::from(*burst) * u128::from(*cost_ns);
                    *token_ns = (*token_ns + u128::from(now - *at_ns)).min(full);
                    *at_ns = now;
                }
            }
            Self::Fill {
                anchor_ns,
                fill_ns,
                max_tokens,
                tokens_per_fill,
                tokens,
                filled_to,
            } => {
                let boundary = if now > *anchor_ns && *fill_ns > 0 {
                    (now - *anchor_ns) / *fill_ns
                } else {
                    0
                };
                if boundary > *filled_to {
                    let gained = u128::from(boundary - *filled_to) * u128::from(*tokens_per_fill);
                    *tokens = (u128::from(*tokens) + gained).min(u128::from(*max_tokens)) as u64;
                    *filled_to = boundary;
                }
            }
        }
    }

    /// Whole tokens held at `now`.
    pub fn tokens(&mut self, now: u64) -> u64 {
        self.refill(now);
        match self {
            Self::Rate {
                cost_ns, token_ns, ..
            } => (*token_ns / u128::from((*cost_ns).max(1))) as u64,
            Self::Fill { tokens, .. } => *tokens,
        }
    }

    /// Offers one connection at `now`: true (and a token taken) when the bucket has one.
    pub fn offer(&mut self, now: u64) -> bool {
        self.refill(now);
        match self {
            Self::Rate {
                cost_ns, token_ns, ..
            } => {
                let cost = u128::from(*cost_ns);
                if *token_ns >= cost {
                    *token_ns -= cost;
                    true
                } else {
                    false
                }
            }
            Self::Fill { tokens, .. } => {
                if *tokens > 0 {
                    *tokens -= 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Gives back the token of a connection a later rule refused.
    /// Takes a connection at `now` whatever the bucket holds, never below empty (for
    /// [`crate::model::Bracket`]).
    pub fn take_anyway(&mut self, now: u64) {
        self.refill(now);
        match self {
            Self::Rate {
                cost_ns, token_ns, ..
            } => *token_ns = token_ns.saturating_sub(u128::from(*cost_ns)),
            Self::Fill { tokens, .. } => *tokens = tokens.saturating_sub(1),
        }
    }

    pub fn refund(&mut self) {
        match self {
            Self::Rate {
                cost_ns,
                burst,
                token_ns,
                ..
            } => {
                let full = u128::from(*burst) * u128::from(*cost_ns);
                *token_ns = (*token_ns + u128::from(*cost_ns)).min(full);
            }
            Self::Fill {
                max_tokens, tokens, ..
            } => *tokens = (*tokens + 1).min(*max_tokens),
        }
    }
}

impl crate::model::Bucket for ConnBucketModel {
    fn offer(&mut self, now: u64) -> bool {
        ConnBucketModel::offer(self, now)
    }

    fn take_anyway(&mut self, now: u64) {
        ConnBucketModel::take_anyway(self, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_rate_form_lets_its_burst_through_then_one_per_cost() {
        let mut bucket = ConnBucketModel::rate(10 * MS, 5);
        let start = 1_000 * MS;
        assert_eq!((0..9).filter(|_| bucket.offer(start)).count(), 5);
        // 9.999 ms later: not a whole token yet; at 10 ms, one.
        assert!(!bucket.offer(start + 10 * MS - 1));
        assert!(bucket.offer(start + 10 * MS));
        assert!(!bucket.offer(start + 10 * MS));
        // Idle for long: full, never more.
        assert_eq!(bucket.tokens(start + 10_000 * MS), 5);
    }

    #[test]
    fn partial_tokens_add_up_exactly() {
        let mut bucket = ConnBucketModel::rate(3, 1);
        assert!(bucket.offer(10));
        // 1 ns + 1 ns + 1 ns of refill make one token.
        assert!(!bucket.offer(11));
        assert!(!bucket.offer(12));
        assert!(bucket.offer(13));
    }

    #[test]
    fn the_fill_form_gains_at_boundaries_only() {
        let mut bucket = ConnBucketModel::fill(100, 1_000, 4, 3);
        assert_eq!((0..9).filter(|_| bucket.offer(150)).count(), 4);
        assert!(!bucket.offer(1_099));
        assert_eq!(bucket.tokens(1_100), 3);
        // Two boundaries later: 3 + 6, capped at 4.
        assert_eq!(bucket.tokens(3_100), 4);
        // Before the anchor: interval 0, like just after it.
        let mut early = ConnBucketModel::fill(1_000, 100, 2, 1);
        assert!(early.offer(5) && early.offer(1_050) && !early.offer(1_099));
        assert!(early.offer(1_100));
    }

    #[test]
    fn a_refund_gives_one_token_back_and_never_overfills() {
        let mut rate = ConnBucketModel::rate(7, 2);
        assert!(rate.offer(100));
        rate.refund();
        assert_eq!(rate.tokens(100), 2);
        rate.refund();
        assert_eq!(rate.tokens(100), 2);
        let mut fill = ConnBucketModel::fill(0, 10, 1, 1);
        assert!(fill.offer(5));
        assert!(!fill.offer(5));
        fill.refund();
        assert!(fill.offer(5));
    }

    #[test]
    fn huge_times_do_not_overflow() {
        let mut rate = ConnBucketModel::rate(u64::MAX, 3);
        assert!(rate.offer(u64::MAX));
        let mut fill = ConnBucketModel::fill(0, 1, u64::MAX, u64::MAX);
        assert!(fill.offer(u64::MAX));
        assert_eq!(fill.tokens(u64::MAX), u64::MAX - 1);
    }
}
