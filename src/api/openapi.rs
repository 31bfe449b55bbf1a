//! The OpenAPI 3.1 description of `/v1`, generated from the handlers and
//! the types they answer with. Served at `/v1/openapi.json`; the copy in
//! `docs/openapi.json` is checked against it by the tests.
//!
//! May call: the handlers' modules (for their annotations), `ingest`.

use axum::Json;
use serde_json::json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, RefOr, Required, Response, Schema};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::{callbacks, deliveries, stats, tasks};

/// The description: every `/v1` operation, its parameters, bodies and
/// answers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskhook control API",
        description = "Hand AceData Cloud task IDs to taskhook, follow them, and recover \
                       deliveries. When `api.token` is set every operation needs \
                       `Authorization: Bearer TOKEN`. Times are RFC 3339 in UTC.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        tasks::enqueue,
        tasks::list_tasks,
        tasks::get_task,
        tasks::delete_task,
        stats::stats,
        stats::activity,
        deliveries::list_deliveries,
        deliveries::replay,
        deliveries::replay_matching,
        callbacks::receive,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Conventions),
    security(("bearer" = [])),
    tags(
        (name = "tasks", description = "Tasks handed in and followed"),
        (name = "deliveries", description = "Deliveries to webhooks, dead letters, replay"),
        (name = "queue", description = "The queue summary and recent activity"),
    )
)]
pub struct ApiDoc;

/// What every operation shares, added in one place: the bearer scheme,
/// the enqueue body (parsed by hand in `ingest` for its error messages),
/// and the answers any `/v1` request can get.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`api.token`, when it is set"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "callback_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "`api.callback_token` (else `api.token`) in the callback URL",
            ))),
        );
        components
            .schemas
            .insert("TaskIn".into(), schema(task_in()));
        components
            .schemas
            .insert("EnqueueRequest".into(), schema(enqueue_request()));
        let error = |description: &str| {
            RefOr::T(
                Response::builder()
                    .description(description)
                    .content(
                        "application/json",
                        Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "ErrorBody",
                        )))),
                    )
                    .build(),
            )
        };
        if let Some(post) = api
            .paths
            .paths
            .get_mut("/v1/tasks")
            .and_then(|item| item.post.as_mut())
        {
            post.request_body = Some(enqueue_body());
        }
        for item in api.paths.paths.values_mut() {
            let ops: [Option<&mut Operation>; 3] =
                [item.get.as_mut(), item.post.as_mut(), item.delete.as_mut()];
            for op in ops.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                responses
                    .entry("401".into())
                    .or_insert_with(|| error("`api.token` is set and the request lacks it"));
                responses
                    .entry("503".into())
                    .or_insert_with(|| error("The store cannot be reached; retry"));
            }
        }
    }
}

fn schema(v: serde_json::Value) -> RefOr<Schema> {
    serde_json::from_value(v).expect("a valid schema")
}

/// One task handed in (`POST /v1/tasks`).
fn task_in() -> serde_json::Value {
    json!({
        "type": "object",
        "description": "One task to watch.",
        "required": ["id"],
        "additionalProperties": false,
        "properties": {
            "id": {
                "type": "string",
                "description": "The upstream's task ID: 1 to 256 bytes, no control characters.",
                "minLength": 1,
                "maxLength": crate::ingest::MAX_ID_BYTES,
                "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
            },
            "service": {
                "type": ["string", "null"],
                "description": "The upstream service (default: `upstream.default_service`). \
                                A name without a profile is refused (422 `unknown_service`) \
                                unless `upstream.allow_unknown_services` is set.",
                "pattern": "^[A-Za-z0-9_-]{1,64}$",
                "examples": ["suno"],
            },
            "webhooks": {
                "type": ["array", "null"],
                "description": "Extra webhook URLs for this task (at most \
                                `api.max_webhooks_per_task`), beside the configured webhooks.",
                "items": {"type": "string", "format": "uri"},
            },
            "metadata": {
                "type": ["object", "null"],
                "description": "Echoed in the task's event.",
            },
        },
    })
}

/// One task, or `{"tasks": [...]}`.
fn enqueue_request() -> serde_json::Value {
    json!({
        "description": "One task, or several under `tasks`.",
        "oneOf": [
            {"$ref": "#/components/schemas/TaskIn"},
            {
                "type": "object",
                "required": ["tasks"],
                "additionalProperties": false,
                "properties": {
                    "tasks": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/components/schemas/TaskIn"},
                    },
                },
            },
        ],
    })
}

fn enqueue_body() -> RequestBody {
    let mut body = RequestBody::new();
    body.required = Some(Required::True);
    body.content.insert(
        "application/json".into(),
        Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "EnqueueRequest",
        )))),
    );
    body
}

/// The description as JSON, pretty-printed as it is committed.
pub fn to_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the description serializes")
}

/// `GET /v1/openapi.json` (open: it holds no secrets).
pub(super) async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
