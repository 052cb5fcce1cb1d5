//! How the API server's refusals are told apart where the answer changes what happens next.

/// Whether the API server refused a write because the object's namespace is being deleted
/// (403 with the cause `NamespaceTerminating`): the app goes with its namespace, so there is
/// nothing to retry and nothing wrong to report.
pub fn namespace_terminating(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            status.code == 403
                && status
                    .details
                    .as_ref()
                    .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn refusal(code: u16, causes: Value) -> kube::Error {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "refused", "reason": "Forbidden", "code": code,
            "details": { "causes": causes },
        });
        kube::Error::Api(serde_json::from_value(body).expect("a Status"))
    }

    #[test]
    fn only_the_namespace_terminating_cause_counts_as_a_namespace_going() {
        let going = json!([{"reason": "NamespaceTerminating"}]);
        assert!(namespace_terminating(&refusal(403, going.clone())));
        assert!(!namespace_terminating(&refusal(403, json!([]))));
        assert!(!namespace_terminating(&refusal(
            403,
            json!([{"reason": "FieldValueInvalid"}])
        )));
        assert!(!namespace_terminating(&refusal(409, going)));
    }
}
