//! The apps a server serves: id, key, secret and limits, from the command line or a JSON file
//! (`--apps FILE`).
//!
//! ```json
//! {"apps": [{"id": "1", "key": "app-key", "secret": "app-secret",
//!            "limits": {"max_presence_members": 50}}]}
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

/// Presence members per channel, by default.
pub const DEFAULT_MAX_PRESENCE_MEMBERS: usize = 100;
/// Bytes of a presence member's `user_info`, by default.
pub const DEFAULT_MAX_PRESENCE_INFO_BYTES: usize = 2048;
/// Channels one connection may subscribe to, by default.
pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 100;
/// Client events one connection may send per second, by default.
pub const DEFAULT_CLIENT_EVENTS_PER_SECOND: u32 = 10;
/// Bytes of an event's `data` (client events and the HTTP API), by default.
pub const DEFAULT_MAX_EVENT_DATA_BYTES: usize = 10 * 1024;
/// Channels one HTTP API event may name, by default.
pub const DEFAULT_MAX_EVENT_CHANNELS: usize = 100;
/// Events one `batch_events` request may hold, by default.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 10;
/// The `activity_timeout` told to clients, in seconds, by default.
pub const DEFAULT_ACTIVITY_TIMEOUT_SECS: u64 = 120;

/// One app's limits. Every field may be left out of the file for its default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppLimits {
    /// Members of one presence channel.
    pub max_presence_members: usize,
    /// Bytes of one member's `user_info`.
    pub max_presence_info_bytes: usize,
    /// Channels one connection may hold.
    pub max_channels_per_connection: usize,
    /// Client events per second per connection; past it, `pusher:error` 4301.
    pub client_events_per_second: u32,
    /// Bytes of one event's `data`.
    pub max_event_data_bytes: usize,
    /// Channels one API event may name.
    pub max_event_channels: usize,
    /// Events in one batch.
    pub max_batch_events: usize,
    /// Seconds of `activity_timeout` told to clients.
    pub activity_timeout: u64,
    /// Connections to the app on this node, at most (`None`: no limit); one more is told
    /// `pusher:error` 4004 and closed with 4004.
    pub max_connections: Option<usize>,
}

impl Default for AppLimits {
    fn default() -> Self {
        Self {
            max_presence_members: DEFAULT_MAX_PRESENCE_MEMBERS,
            max_presence_info_bytes: DEFAULT_MAX_PRESENCE_INFO_BYTES,
            max_channels_per_connection: DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            client_events_per_second: DEFAULT_CLIENT_EVENTS_PER_SECOND,
            max_event_data_bytes: DEFAULT_MAX_EVENT_DATA_BYTES,
            max_event_channels: DEFAULT_MAX_EVENT_CHANNELS,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            activity_timeout: DEFAULT_ACTIVITY_TIMEOUT_SECS,
            max_connections: None,
        }
    }
}

/// One app.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The id in the HTTP API's paths (`/apps/{id}/…`).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`).
    pub key: String,
    /// The secret that signs subscriptions and API requests. Never logged.
    pub secret: String,
    /// Its limits.
    #[serde(default)]
    pub limits: AppLimits,
    /// Where its webhooks go.
    #[serde(default)]
    pub webhooks: Vec<super::webhook::WebhookConfig>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("limits", &self.limits)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

/// Why an app configuration was refused (one line each, for the CLI).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The file is not the expected JSON.
    #[error("--apps: {0}")]
    Json(String),
    /// No app at all.
    #[error("pusher mode needs an app: --app-id, --app-key and --app-secret, or --apps FILE")]
    None,
    /// A field is empty or holds characters it may not.
    #[error("app {field} {value:?} must be 1 to 100 characters of A-Z a-z 0-9 _ - .")]
    BadField {
        /// Which field.
        field: &'static str,
        /// The value (never the secret's).
        value: String,
    },
    /// The secret is empty.
    #[error("app {0:?} has an empty secret")]
    EmptySecret(String),
    /// Two apps share an id or a key.
    #[error("two apps share the {field} {value:?}")]
    Duplicate {
        /// `id` or `key`.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// A webhook URL that is not `http://…`.
    #[error("app {0:?}: {1}")]
    Webhook(String, super::webhook::UrlError),
    /// A webhook event type that does not exist.
    #[error("app {0:?}: unknown webhook event type {1:?}")]
    WebhookEvent(String, String),
    /// A limit of 0 where one is needed.
    #[error("app {0:?}: every limit but client_events_per_second must be at least 1")]
    ZeroLimit(String),
}

/// Every app, found by key (connections) or by id (the HTTP API).
#[derive(Debug, Clone)]
pub struct Apps {
    apps: Vec<Arc<App>>,
    by_key: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
}

impl Apps {
    /// Checks and indexes a list of apps.
    ///
    /// # Errors
    ///
    /// See [`AppError`].
    pub fn new(apps: Vec<App>) -> Result<Self, AppError> {
        if apps.is_empty() {
            return Err(AppError::None);
        }
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for (index, app) in apps.iter().enumerate() {
            for (field, value) in [("id", &app.id), ("key", &app.key)] {
                if value.is_empty()
                    || value.len() > 100
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                {
                    return Err(AppError::BadField {
                        field,
                        value: value.clone(),
                    });
                }
            }
            if app.secret.is_empty() {
                return Err(AppError::EmptySecret(app.id.clone()));
            }
            let l = &app.limits;
            if [
                l.max_presence_members,
                l.max_presence_info_bytes,
                l.max_channels_per_connection,
                l.max_event_data_bytes,
                l.max_event_channels,
                l.max_batch_events,
            ]
            .contains(&0)
                || l.activity_timeout == 0
            {
                return Err(AppError::ZeroLimit(app.id.clone()));
            }
            for hook in &app.webhooks {
                super::webhook::Url::parse(&hook.url)
                    .map_err(|e| AppError::Webhook(app.id.clone(), e))?;
                if let Some(bad) = hook
                    .event_types
                    .iter()
                    .find(|t| !super::webhook::EVENT_TYPES.contains(&t.as_str()))
                {
                    return Err(AppError::WebhookEvent(app.id.clone(), bad.clone()));
                }
            }
            if by_key.insert(app.key.clone(), index).is_some() {
                return Err(AppError::Duplicate {
                    field: "key",
                    value: app.key.clone(),
                });
            }
            if by_id.insert(app.id.clone(), index).is_some() {
                return Err(AppError::Duplicate {
                    field: "id",
                    value: app.id.clone(),
                });
            }
        }
        Ok(Self {
            apps: apps.into_iter().map(Arc::new).collect(),
            by_key,
            by_id,
        })
    }

    /// Reads `{"apps": [...]}` (or a bare array).
    ///
    /// # Errors
    ///
    /// Bad JSON, unknown fields, or what [`Apps::new`] refuses.
    pub fn from_json(text: &str) -> Result<Self, AppError> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum File {
            Wrapped { apps: Vec<App> },
            Bare(Vec<App>),
        }
        let file: File = serde_json::from_str(text).map_err(|e| {
            AppError::Json(format!(
                "expected {{\"apps\": [{{\"id\", \"key\", \"secret\", \"limits\"?}}]}} ({e})"
            ))
        })?;
        Self::new(match file {
            File::Wrapped { apps } | File::Bare(apps) => apps,
        })
    }

    /// The app clients connect to with `key`.
    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key).map(|&i| &self.apps[i])
    }

    /// The app of the API path `/apps/{id}`.
    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id).map(|&i| &self.apps[i])
    }

    /// Every app, in the order given (the index of [`Apps::index_of`]).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.iter()
    }

    /// The index of the app with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, key: &str) -> App {
        App {
            id: id.into(),
            key: key.into(),
            secret: "s".into(),
            limits: AppLimits::default(),
            webhooks: Vec::new(),
        }
    }

    #[test]
    fn finds_apps_by_key_and_id() {
        let apps = Apps::new(vec![app("1", "k1"), app("2", "k2")]).unwrap();
        assert_eq!(apps.by_key("k2").unwrap().id, "2");
        assert_eq!(apps.by_id("1").unwrap().key, "k1");
        assert!(apps.by_key("1").is_none());
    }

    #[test]
    fn refuses_bad_sets() {
        assert!(matches!(Apps::new(vec![]), Err(AppError::None)));
        assert!(matches!(
            Apps::new(vec![app("1", "k"), app("2", "k")]),
            Err(AppError::Duplicate { field: "key", .. })
        ));
        assert!(matches!(
            Apps::new(vec![app("a:b", "k")]),
            Err(AppError::BadField { field: "id", .. })
        ));
        let mut no_secret = app("1", "k");
        no_secret.secret.clear();
        assert!(matches!(
            Apps::new(vec![no_secret]),
            Err(AppError::EmptySecret(_))
        ));
    }

    #[test]
    fn reads_the_file_with_per_app_limits() {
        let apps = Apps::from_json(
            r#"{"apps":[{"id":"1","key":"k","secret":"s","limits":{"max_presence_members":5}},
                        {"id":"2","key":"k2","secret":"s2"}]}"#,
        )
        .unwrap();
        assert_eq!(apps.by_id("1").unwrap().limits.max_presence_members, 5);
        assert_eq!(apps.by_id("1").unwrap().limits.max_batch_events, 10);
        assert_eq!(apps.by_id("2").unwrap().limits, AppLimits::default());
        assert!(Apps::from_json(r#"[{"id":"1","key":"k","secret":"s"}]"#).is_ok());
        let unknown = Apps::from_json(r#"[{"id":"1","key":"k","secret":"s","limits":{"nope":1}}]"#);
        assert!(matches!(unknown, Err(AppError::Json(_))));
        assert!(
            !format!("{:?}", apps.by_id("2").unwrap()).contains("s2"),
            "secret redacted"
        );
    }
}
