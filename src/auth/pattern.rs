//! Topic patterns, as a token's `subscribe` and `publish` claims list them: exact names,
//! `prefix.*` (or `prefix/*`) for every topic under a prefix, and `*` for every topic.

/// One pattern of a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicPattern {
    /// Every topic (`*`).
    Any,
    /// This topic only.
    Exact(Box<str>),
    /// Every topic that starts with this prefix, separator included, and has at least one
    /// byte after it: `news.*` is stored as `news.`, so it covers `news.eu` and `news.eu.fr`
    /// but neither `news` nor `newsroom`.
    Under(Box<str>),
}

impl TopicPattern {
    /// Reads a pattern. A `*` anywhere but alone or after a final `.` or `/` is an ordinary
    /// byte of an exact name: a pattern can only ever cover less than it seems to, not more.
    pub fn parse(text: &str) -> Self {
        if text == "*" {
            return Self::Any;
        }
        match text.strip_suffix('*') {
            Some(prefix)
                if prefix.len() > 1 && (prefix.ends_with('.') || prefix.ends_with('/')) =>
            {
                Self::Under(prefix.into())
            }
            _ => Self::Exact(text.into()),
        }
    }

    /// Whether the pattern covers `topic`.
    pub fn covers(&self, topic: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => **name == *topic,
            Self::Under(prefix) => topic.len() > prefix.len() && topic.starts_with(&**prefix),
        }
    }
}

/// The patterns of one claim; an empty list covers nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicPatterns(Vec<TopicPattern>);

impl TopicPatterns {
    /// Reads every pattern of a claim.
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        Self(texts.into_iter().map(TopicPattern::parse).collect())
    }

    /// Whether any pattern covers `topic`.
    pub fn covers(&self, topic: &str) -> bool {
        self.0.iter().any(|pattern| pattern.covers(topic))
    }

    /// The patterns, in the claim's order.
    pub fn iter(&self) -> impl Iterator<Item = &TopicPattern> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_prefix_pattern_stops_at_its_separator() {
        let news = TopicPattern::parse("news.*");
        assert!(news.covers("news.eu"));
        assert!(news.covers("news.eu.fr"));
        assert!(!news.covers("newsroom"));
        assert!(!news.covers("news"));
        assert!(!news.covers("news."));
        assert!(!news.covers("new"));
        let rooms = TopicPattern::parse("rooms/*");
        assert!(rooms.covers("rooms/a"));
        assert!(!rooms.covers("roomsa"));
    }

    #[test]
    fn exact_names_and_any() {
        assert!(TopicPattern::parse("prices").covers("prices"));
        assert!(!TopicPattern::parse("prices").covers("prices.eu"));
        assert!(!TopicPattern::parse("prices").covers("price"));
        assert!(TopicPattern::parse("*").covers("anything/at.all"));
        // Stars elsewhere are literal: they never widen a grant.
        for literal in ["news*", ".*", "a*b", "*.news", "**"] {
            assert_eq!(
                TopicPattern::parse(literal),
                TopicPattern::Exact(literal.into())
            );
            assert!(!TopicPattern::parse(literal).covers("newsroom"));
        }
    }

    #[test]
    fn an_empty_claim_covers_nothing() {
        assert!(!TopicPatterns::default().covers("x"));
        assert!(!TopicPatterns::parse([]).covers(""));
        assert!(TopicPatterns::parse(["a", "b.*"]).covers("b.c"));
    }

    proptest! {
        /// `prefix.*` covers exactly the topics that begin with `prefix.` and go on.
        #[test]
        fn under_covers_exactly_its_subtree(prefix in "[a-z]{1,6}", topic in "[a-z.]{0,12}") {
            let pattern = TopicPattern::parse(&format!("{prefix}.*"));
            let expected = topic.len() > prefix.len() + 1 && topic.starts_with(&format!("{prefix}."));
            prop_assert_eq!(pattern.covers(&topic), expected);
        }

        /// An exact name covers itself and nothing else.
        #[test]
        fn exact_covers_only_itself(name in "[a-z./]{1,8}", topic in "[a-z./]{0,8}") {
            prop_assume!(!name.ends_with(".*") && !name.ends_with("/*"));
            prop_assert_eq!(TopicPattern::parse(&name).covers(&topic), name == topic);
        }

        /// Whatever the pattern text, it never covers a topic that does not begin with the
        /// text before its first star (or the whole text, if it has none).
        #[test]
        fn no_pattern_covers_more_than_its_literal_part(text in "[a-z.*/]{1,8}", topic in "[a-z./]{0,10}") {
            prop_assume!(text != "*");
            let literal = text.split('*').next().unwrap_or_default();
            if TopicPattern::parse(&text).covers(&topic) {
                prop_assert!(topic.starts_with(literal));
            }
        }
    }
}
