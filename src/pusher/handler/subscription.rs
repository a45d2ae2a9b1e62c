//! Subscribing and leaving: a channel's authorization, presence membership and cached
//! event, the resume from a position, and what leaving a channel tells the others.

use super::{subscription_error, topic, Pusher, PusherConn, STAMP};
use crate::broadcast::{Connection, Resumed};
use crate::protocol::OpCode;
use crate::pusher::app::App;
use crate::pusher::auth::{self, AuthError};
use crate::pusher::channel::Channel;
use crate::pusher::message::{self, Resume};
use crate::pusher::presence::{Member, PresenceError};
use crate::pusher::webhook;

impl Pusher {
    pub(super) fn subscribe(
        &mut self,
        conn: &mut Connection<'_, PusherConn>,
        app: &App,
        name: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
        resume: Resume,
    ) {
        let channel = match Channel::parse(name) {
            Ok(channel) => channel,
            Err(error) => {
                return subscription_error(conn, name, "InvalidChannel", &error.to_string(), 400)
            }
        };
        if conn.data().channels.contains_key(name) {
            // Already subscribed: confirm again, count nothing twice.
            let presence = channel
                .is_presence()
                .then(|| self.node.state(app).snapshot(name));
            let ok = message::encode_subscription_succeeded(name, presence);
            return conn.send(OpCode::Text, ok.as_bytes());
        }
        if conn.data().channels.len() >= app.limits.max_channels_per_connection {
            let error = format!(
                "the connection holds {} channels, the limit",
                app.limits.max_channels_per_connection
            );
            return subscription_error(conn, name, "LimitReached", &error, 400);
        }
        if channel.needs_auth() {
            let data = channel_data.filter(|_| channel.is_presence());
            let socket_id = conn.data().socket_id.clone();
            if let Err(error) =
                auth::verify_channel(&app.key, &app.secret, &socket_id, name, data, auth)
            {
                let status = match error {
                    AuthError::Malformed => 400,
                    AuthError::Missing | AuthError::WrongKey | AuthError::BadSignature => 401,
                };
                return subscription_error(conn, name, "AuthError", &error.to_string(), status);
            }
        }
        let member = if channel.is_presence() {
            match Member::parse(
                channel_data.unwrap_or_default(),
                app.limits.max_presence_info_bytes,
            ) {
                Ok(member) => Some(member),
                Err(error) => {
                    return subscription_error(
                        conn,
                        name,
                        "InvalidChannelData",
                        &error.to_string(),
                        400,
                    )
                }
            }
        } else {
            None
        };
        let topic = topic(app, name);
        if member.is_none() {
            return self.subscribe_resuming(conn, app, name, &channel, &topic, resume);
        }
        if let Err(refusal) = conn.subscribe(&topic) {
            return subscription_error(conn, name, "LimitReached", &refusal.to_string(), 400);
        }
        let user = member
            .as_ref()
            .map(|m| (m.user_id.clone(), m.user_info.clone()));
        let mut state = self.node.state(app);
        let joined = state.subscribe(name, member, app.limits.max_presence_members);
        if let (Ok(joined), Some((user_id, info))) = (&joined, &user) {
            // Told to the other nodes, and the event made here, under the app's lock: the
            // order of the app's changes.
            let first = joined.local_first.then_some((user_id.as_str(), &**info));
            self.node
                .share_join(app, name, first, joined.local_occupied);
            if joined.first && self.node.clustered() {
                let added = message::encode_member_added(name, user_id, info);
                self.node
                    .deliver_local(app, name, &added, Some(conn.peer()));
            }
        }
        drop(state);
        let joined = match joined {
            Ok(joined) => joined,
            Err(error) => {
                conn.unsubscribe(&topic);
                let status = match error {
                    PresenceError::Full(_) => 403,
                    PresenceError::BadChannelData | PresenceError::InfoTooLarge { .. } => 400,
                };
                return subscription_error(conn, name, "LimitReached", &error.to_string(), status);
            }
        };
        conn.data()
            .channels
            .insert(name.into(), user.as_ref().map(|(id, _)| id.clone()));
        let ok = message::encode_subscription_succeeded(name, joined.presence);
        conn.send(OpCode::Text, ok.as_bytes());
        if resume != Resume::No {
            // Replayed member events would contradict the member list just sent.
            let failed = message::encode_resume_failed(name, None);
            conn.send(OpCode::Text, failed.as_bytes());
        }
        let webhooks = self.node.fires_webhooks();
        if joined.occupied && webhooks {
            self.node.webhook(app, || webhook::Event::ChannelOccupied {
                channel: name.to_owned(),
            });
        }
        if let (true, Some((user_id, info))) = (joined.first, &user) {
            if !self.node.clustered() {
                let added = message::encode_member_added(name, user_id, info);
                conn.publish_stamped(&topic, OpCode::Text, added.as_bytes(), true, STAMP);
            }
            if webhooks {
                self.node.webhook(app, || webhook::Event::MemberAdded {
                    channel: name.to_owned(),
                    user_id: user_id.clone(),
                });
            }
        }
        if channel.is_cache() {
            let cached = joined
                .cached
                .unwrap_or_else(|| message::encode_cache_miss(name));
            conn.send(OpCode::Text, cached.as_bytes());
        }
    }

    /// Subscribes to a channel without members, from the position `resume` names when it
    /// can: `subscription_succeeded` first, then exactly the events missed, then live ones;
    /// or, when they cannot be had, `uringcast:resume_failed` after `subscription_succeeded`.
    /// With history on, a `subscription_succeeded` that replays nothing carries the
    /// channel's position (`offset`, `epoch`), where the live events start; one followed by
    /// a lone node's new epoch from its start carries that start (`offset` 0), where the
    /// replay starts.
    fn subscribe_resuming(
        &mut self,
        conn: &mut Connection<'_, PusherConn>,
        app: &App,
        name: &str,
        channel: &Channel<'_>,
        topic: &str,
        resume: Resume,
    ) {
        let since = match resume {
            Resume::From(position) => Some(position),
            Resume::No | Resume::Malformed => None,
        };
        let asked = resume != Resume::No;
        // `resume_failed` goes with `subscription_succeeded`, before anything replayed: after
        // a restart the replay is the new epoch from its start, and the position a client
        // takes from `resume_failed` must come before the events that move it on.
        let resumed = conn.subscribe_from_with_all(topic, since, |resumed| {
            let ok = message::encode_subscription_succeeded(name, None);
            let (ok, failed) = match resumed {
                Resumed::Exact { head, .. } if since.is_none() => (
                    message::stamp_position(ok.as_bytes(), *head).to_vec(),
                    Some(*head),
                ),
                Resumed::Exact { head, .. } => (ok.into_bytes(), Some(*head)),
                Resumed::NotRecovered { head } | Resumed::EpochStart { start: head, .. } => (
                    message::stamp_position(ok.as_bytes(), *head).to_vec(),
                    Some(*head),
                ),
                _ => (ok.into_bytes(), None),
            };
            let exact = since.is_some() && matches!(resumed, Resumed::Exact { .. });
            let mut messages = vec![ok];
            if asked && !exact {
                messages.push(message::encode_resume_failed(name, failed).into_bytes());
            }
            messages
        });
        let resumed = match resumed {
            Ok(resumed) => resumed,
            Err(refusal) => {
                return subscription_error(conn, name, "LimitReached", &refusal.to_string(), 400)
            }
        };
        let mut state = self.node.state(app);
        let joined = state.subscribe(name, None, app.limits.max_presence_members);
        if let Ok(joined) = &joined {
            self.node.share_join(app, name, None, joined.local_occupied);
        }
        drop(state);
        let joined = match joined {
            Ok(joined) => joined,
            Err(error) => {
                // Only a member can be refused; kept total all the same.
                conn.unsubscribe(topic);
                return subscription_error(conn, name, "LimitReached", &error.to_string(), 400);
            }
        };
        conn.data().channels.insert(name.into(), None);
        // What was replayed ends with the channel's last event.
        let replayed = match resumed {
            Resumed::Exact { .. } => since.is_some(),
            Resumed::EpochStart { .. } => true,
            _ => false,
        };
        if joined.occupied && self.node.fires_webhooks() {
            self.node.webhook(app, || webhook::Event::ChannelOccupied {
                channel: name.to_owned(),
            });
        }
        if channel.is_cache() && !replayed {
            // A resume already holds the channel's last event, or what followed it.
            let cached = joined
                .cached
                .unwrap_or_else(|| message::encode_cache_miss(name));
            conn.send(OpCode::Text, cached.as_bytes());
        }
    }

    pub(super) fn unsubscribe(
        &mut self,
        conn: &mut Connection<'_, PusherConn>,
        app: &App,
        name: &str,
    ) {
        let Some(user_id) = conn.data().channels.remove(name) else {
            return;
        };
        conn.unsubscribe(&topic(app, name));
        self.left(conn, app, name, user_id.as_deref());
    }

    /// A subscription ended: counts, and `member_removed` on a user's last.
    pub(super) fn left(
        &mut self,
        conn: &mut Connection<'_, PusherConn>,
        app: &App,
        name: &str,
        user_id: Option<&str>,
    ) {
        let mut state = self.node.state(app);
        let left = state.unsubscribe(name, user_id);
        let clustered = self.node.clustered();
        self.node.share_leave(
            app,
            name,
            user_id.filter(|_| left.local_member),
            left.local_vacated,
        );
        if let (true, true, Some(user_id)) = (clustered, left.member, user_id) {
            let removed = message::encode_member_removed(name, user_id);
            self.node
                .deliver_local(app, name, &removed, Some(conn.peer()));
        }
        drop(state);
        let webhooks = self.node.fires_webhooks();
        if let (true, Some(user_id)) = (left.member, user_id) {
            if !clustered {
                let removed = message::encode_member_removed(name, user_id);
                conn.publish_stamped(
                    &topic(app, name),
                    OpCode::Text,
                    removed.as_bytes(),
                    true,
                    STAMP,
                );
            }
            if webhooks {
                self.node.webhook(app, || webhook::Event::MemberRemoved {
                    channel: name.to_owned(),
                    user_id: user_id.to_owned(),
                });
            }
        }
        if left.vacated && webhooks {
            self.node.webhook(app, || webhook::Event::ChannelVacated {
                channel: name.to_owned(),
            });
        }
    }
}
