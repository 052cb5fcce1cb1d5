//! The autoscaler's newest replica recommendation per app, handed to the reconciler in
//! memory.
//!
//! The autoscaler publishes its recommendation in `status.autoscaler.recommendedReplicas`,
//! and the reconciler is the one writer of the Deployment's replicas. Waiting for that status
//! write to come back through the WsgiApp watch before the Deployment moves costs a write and
//! a watch event in series (about 10 ms on a quiet API server, more on a busy one): time a
//! request held at the activator for an app at zero waits on. So the autoscaler also records
//! the recommendation here and wakes the app's reconcile at once; the reconciler prefers what
//! it finds here to the status, and the status write goes out at the same time.
//!
//! The board lives for one leadership term (the controllers, the autoscaler and the caches
//! are built per term): a new leader starts empty and reads the status, which the previous
//! leader's autoscaler wrote. An app the autoscaler stops deciding (not autoscaled any more,
//! deleted) leaves the board, so the reconciler reads the status again.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;

use crate::crd::WsgiApp;

/// Wakes the reconcile of one app, by its reference.
pub type Wake = UnboundedSender<ObjectRef<WsgiApp>>;

/// Recommendations by app (`namespace/name`), and the wake-ups of the controllers of each
/// watched scope (a namespace, or `None` for all).
#[derive(Default)]
pub struct Recommendations {
    by_app: Mutex<HashMap<String, i32>>,
    wakes: Mutex<Vec<(Option<String>, Wake)>>,
}

/// Whether a recommendation `new` is news to the reconciler, which knows `handed` (this
/// board's) or else `published` (the status').
pub fn is_news(new: i32, handed: Option<i32>, published: Option<i32>) -> bool {
    handed.or(published) != Some(new)
}

impl Recommendations {
    /// Wakes the controller of `scope` through `wake` when its apps get news.
    pub fn add_wake(&self, scope: Option<&str>, wake: Wake) {
        self.wakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((scope.map(str::to_string), wake));
    }

    /// The recommendation for `namespace/name` handed over in this term, if any.
    pub fn of(&self, namespace: &str, name: &str) -> Option<i32> {
        self.by_app
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&format!("{namespace}/{name}"))
            .copied()
    }

    /// Records `replicas` for `namespace/name`; if it is news (against what was handed over
    /// before, or else `published` in the status), wakes the app's reconcile and returns true.
    pub fn hand_over(
        &self,
        namespace: &str,
        name: &str,
        replicas: i32,
        published: Option<i32>,
    ) -> bool {
        let key = format!("{namespace}/{name}");
        let news = {
            let mut by_app = self.by_app.lock().unwrap_or_else(|e| e.into_inner());
            let news = is_news(replicas, by_app.get(&key).copied(), published);
            by_app.insert(key, replicas);
            news
        };
        if news {
            let wakes = self.wakes.lock().unwrap_or_else(|e| e.into_inner());
            let scope = wakes
                .iter()
                .find(|(s, _)| s.as_deref().is_none_or(|s| s == namespace));
            if let Some((_, wake)) = scope {
                // The controller is gone only when the term ends; the status still carries it.
                let _ = wake.unbounded_send(ObjectRef::new(name).within(namespace));
            }
        }
        news
    }

    /// Keeps only the apps in `keep` (`namespace/name`).
    pub fn retain(&self, keep: &std::collections::HashSet<&str>) {
        self.by_app
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep.contains(k.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[test]
    fn news_is_a_change_from_what_the_reconciler_knows() {
        assert!(is_news(1, None, None), "the first recommendation");
        assert!(is_news(1, None, Some(0)), "a change from the status");
        assert!(!is_news(1, None, Some(1)), "what the status says already");
        assert!(!is_news(3, Some(3), Some(1)), "handed over already");
        assert!(
            is_news(1, Some(3), Some(1)),
            "the board is newer than the status"
        );
    }

    #[tokio::test]
    async fn news_wakes_the_controller_of_the_apps_namespace_once() {
        let board = Recommendations::default();
        let (a_tx, mut a_rx) = futures::channel::mpsc::unbounded();
        let (b_tx, mut b_rx) = futures::channel::mpsc::unbounded();
        board.add_wake(Some("a"), a_tx);
        board.add_wake(Some("b"), b_tx);
        assert_eq!(board.of("b", "web"), None);

        assert!(board.hand_over("b", "web", 1, Some(0)));
        assert_eq!(board.of("b", "web"), Some(1));
        let woken = b_rx.next().await.expect("woken");
        assert_eq!(woken, ObjectRef::new("web").within("b"));
        assert!(
            a_rx.try_recv().is_err(),
            "another namespace's controller sleeps"
        );

        assert!(!board.hand_over("b", "web", 1, Some(0)), "no news twice");
        assert!(b_rx.try_recv().is_err());

        board.retain(&["a/other"].into_iter().collect());
        assert_eq!(
            board.of("b", "web"),
            None,
            "an app no longer decided leaves"
        );
    }

    #[tokio::test]
    async fn one_controller_for_every_namespace_is_woken_for_any() {
        let board = Recommendations::default();
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        board.add_wake(None, tx);
        assert!(board.hand_over("x", "web", 2, None));
        assert_eq!(
            rx.next().await.expect("woken"),
            ObjectRef::new("web").within("x")
        );
    }
}
