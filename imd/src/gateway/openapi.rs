//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! It owns what the handlers cannot say for themselves: the document's info, the
//! security schemes (the client and the admin token, each as a bearer header or
//! `?token=`), the links between operations, the error responses (one per HTTP status, built from
//! [`ErrorCode::http_status`], so that each lists exactly the codes it can carry), and
//! the rules that attach the errors every operation shares. It lists no route: a path
//! is in the description only because `gateway::router` registered its handler through
//! `utoipa_axum::routes!`, which adds the handler to the router and its
//! `#[utoipa::path]` to the description in one step. That is why the two cannot drift:
//! a route registered any other way is not described (only `/v1/ws`, on purpose: a
//! WebSocket is not an HTTP operation; see `docs/protocol.md`).
//!
//! The description is built once per router and served from memory.

use std::sync::{Arc, OnceLock};

use axum::Extension;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use shared::protocol::{ErrorCode, ErrorResponse};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
    ResponseBuilder, SecurityRequirement,
};
use utoipa::{PartialSchema, ToResponse, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};

/// Every protocol error code, to group by status. [`describe`] matches on every code,
/// so a new one does not compile until it is described: list it here too.
const CODES: [ErrorCode; 9] = [
    ErrorCode::BadRequest,
    ErrorCode::BlockedContent,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Internal,
];

/// When a code is answered, for the description of its status.
fn describe(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => {
            "the body, query or path does not parse, or the request breaks a rule"
        }
        ErrorCode::BlockedContent => {
            "the sensitive-word filter or the pre-send hook refused the content"
        }
        ErrorCode::Unauthorized => "the token is missing, invalid or expired",
        ErrorCode::Forbidden => {
            "the caller may not do this: not a member, not the sender, not the agent, \
             blacklisted, or a client token on the admin API"
        }
        ErrorCode::NotFound => "the conversation, message, shop, group or entry does not exist",
        ErrorCode::Conflict => "the request contradicts the state of what it names",
        ErrorCode::TooLarge => "the body is over the limit",
        ErrorCode::RateLimited => "over a rate limit; retry later",
        ErrorCode::Internal => "the server failed; retrying may help (with the same `cid`)",
    }
}

/// The error answer of `status`: the error body, its `code` narrowed to the codes that
/// carry that status.
fn error_response(status: u16) -> utoipa::openapi::Response {
    let codes: Vec<ErrorCode> = CODES
        .into_iter()
        .filter(|c| c.http_status() == status)
        .collect();
    let text = codes
        .iter()
        .map(|c| format!("`{}`: {}", c.as_str(), describe(*c)))
        .collect::<Vec<_>>()
        .join("; ");
    let code = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(codes.iter().map(|c| c.as_str())));
    let narrowed = ObjectBuilder::new().property(
        "error",
        ObjectBuilder::new().property("code", code).required("code"),
    );
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name(ErrorResponse::name()))
        .item(narrowed);
    ResponseBuilder::new()
        .description(text)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

/// The error answers as reusable responses, named for their use in `#[utoipa::path]`:
/// `(status = 404, response = NotFound)`.
macro_rules! error_responses {
    ($($name:ident = $status:literal),* $(,)?) => {
        $(
            #[doc = concat!("The ", stringify!($status), " error answer.")]
            // Some are only attached by `finish`, by their status.
            #[allow(dead_code)]
            pub(super) struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                    (stringify!($name), error_response($status).into())
                }
            }
        )*

        /// Every error answer, as `(status, component name, response)`.
        fn error_components() -> Vec<(u16, &'static str, RefOr<utoipa::openapi::Response>)> {
            vec![$(($status, stringify!($name), error_response($status).into())),*]
        }
    };
}

error_responses!(
    BadRequest = 400,
    Unauthorized = 401,
    Forbidden = 403,
    NotFound = 404,
    Conflict = 409,
    TooLarge = 413,
    RateLimited = 429,
    Internal = 500,
);

/// The client API's security scheme (`Authorization: Bearer`).
const CLIENT: &str = "client_token";
/// The client token in the query string (`?token=`), for clients that cannot set headers.
const CLIENT_QUERY: &str = "client_token_query";
/// The admin API's security scheme.
const ADMIN: &str = "admin_token";
/// The admin token in the query string.
const ADMIN_QUERY: &str = "admin_token_query";

/// What the router's description starts from: info, security schemes, the error body
/// and the error answers.
pub(super) fn base() -> OpenApi {
    let bearer = |text: &str, format: Option<&str>| {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = format.map(str::to_owned);
        http.description = Some(text.to_owned());
        SecurityScheme::Http(http)
    };
    let query = |text: &str| {
        let mut key = ApiKeyValue::new("token");
        key.description = Some(text.to_owned());
        SecurityScheme::ApiKey(ApiKey::Query(key))
    };
    let mut schemas = vec![(ErrorResponse::name().into_owned(), ErrorResponse::schema())];
    ErrorResponse::schemas(&mut schemas);
    let mut components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme(
            CLIENT,
            bearer(
                "A client token: an HS256 JWT signed with the token secret (`imd token`).",
                Some("JWT"),
            ),
        )
        .security_scheme(CLIENT_QUERY, query("A client token as `?token=`."))
        .security_scheme(ADMIN, bearer("The admin token (`imd admin-token`).", None))
        .security_scheme(ADMIN_QUERY, query("The admin token as `?token=`."));
    for (_, name, response) in error_components() {
        components = components.response(name, response);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("imd")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The HTTP and admin APIs of imd, the instant-messaging daemon: the \
                     operations this node serves. Errors answer with the status of their \
                     code and `{\"error\":{\"code\",\"message\"}}`. The WebSocket \
                     (`GET /v1/ws`) is not described here: see docs/protocol.md.",
                ))
                .build(),
        )
        .components(Some(components.build()))
        .build()
}

/// The methods' operations of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
        &mut item.query,
    ]
    .into_iter()
    .flatten()
}

/// Where a 200 answer leads, so that a client (and the fuzz's stateful phase) can follow
/// what a call created: the message a send committed, the entry or group an admin wrote.
struct Link {
    /// The operation id whose 200 answer links.
    from: &'static str,
    /// The link's name.
    name: &'static str,
    /// The operation id linked to.
    to: &'static str,
    /// Its parameters, as runtime expressions over the request and answer.
    params: &'static [(&'static str, &'static str)],
}

const LINKS: &[Link] = &[
    Link {
        from: "send",
        name: "conversation",
        to: "conversation",
        params: &[("conv", MSG_CONV)],
    },
    Link {
        from: "send",
        name: "history",
        to: "history",
        params: &[("conv", MSG_CONV)],
    },
    Link {
        from: "send",
        name: "read",
        to: "read",
        params: &[("conv", MSG_CONV)],
    },
    Link {
        from: "send",
        name: "recall",
        to: "recall",
        params: &[("conv", MSG_CONV), ("seq", "$response.body#/msg/seq")],
    },
    Link {
        from: "send",
        name: "close",
        to: "close",
        params: &[("conv", MSG_CONV)],
    },
    Link {
        from: "send",
        name: "rate",
        to: "rate",
        params: &[("conv", MSG_CONV)],
    },
    Link {
        from: "admin_blacklist_add",
        name: "remove",
        to: "admin_blacklist_remove",
        params: &[
            ("kind", "$response.body#/kind"),
            ("value", "$response.body#/value"),
        ],
    },
    Link {
        from: "admin_set_group_members",
        name: "members",
        to: "admin_group_members",
        params: &[("name", "$request.path.name")],
    },
    Link {
        from: "admin_set_shop_agents",
        name: "agents",
        to: "admin_shop_agents",
        params: &[("shop", "$request.path.shop")],
    },
    Link {
        from: "admin_set_shop_agents",
        name: "stats",
        to: "admin_shop_stats",
        params: &[("shop", "$request.path.shop")],
    },
];
/// The committed message's conversation, in a send's answer.
const MSG_CONV: &str = "$response.body#/msg/conv";

/// Adds the answers every operation of a kind shares, so that no handler can forget
/// them, and the security and tag of its API, decided by the path as the router nests
/// them (every `/v1/…` handler takes `http::Client`, every `/admin/v1/…` one
/// `admin::AdminAuth`):
/// - `/v1/…`: a client token; 401, 403 (an ip under an automatic ban), 500.
/// - `/admin/v1/…`: the admin token; 401, 403 (a client token, or a banned ip), 500;
///   operation ids
///   prefixed `admin_` (the client API has handlers of the same names).
/// - with a body: 400, 413; with parameters: 400 (they may not parse).
///
/// It also turns axum's catch-all segments (`{*value}`) into OpenAPI's `{value}`: the
/// value may then hold `/`, percent-encoded or not.
fn finish(api: &mut OpenApi) {
    let paths = std::mem::take(&mut api.paths.paths);
    for (path, mut item) in paths {
        let path = path.replace("{*", "{");
        let (tag, security, shared): (&str, &[&str], &[u16]) = if path.starts_with("/admin/v1/") {
            ("admin", &[ADMIN, ADMIN_QUERY], &[401, 403, 500])
        } else if path.starts_with("/v1/") {
            ("client", &[CLIENT, CLIENT_QUERY], &[401, 403, 500])
        } else {
            ("node", &[], &[])
        };
        for op in operations(&mut item) {
            op.tags = Some(vec![tag.to_owned()]);
            if !security.is_empty() {
                op.security = Some(
                    security
                        .iter()
                        .map(|s| SecurityRequirement::new(*s, Vec::<String>::new()))
                        .collect(),
                );
            }
            if tag == "admin"
                && let Some(id) = &mut op.operation_id
            {
                *id = format!("admin_{id}");
            }
            let mut statuses = shared.to_vec();
            if op.request_body.is_some() {
                statuses.extend([400, 413]);
            }
            if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                statuses.push(400);
            }
            for status in statuses {
                let name = error_components()
                    .into_iter()
                    .find(|(s, _, _)| *s == status)
                    .map(|(_, name, _)| name)
                    .expect("every shared status has an error answer");
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| Ref::from_response_name(name).into());
            }
        }
        api.paths.paths.insert(path, item);
    }
    for item in api.paths.paths.values_mut() {
        for op in operations(item) {
            let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") else {
                continue;
            };
            let from = op.operation_id.as_deref();
            for link in LINKS.iter().filter(|l| Some(l.from) == from) {
                let built = link
                    .params
                    .iter()
                    .fold(LinkBuilder::new().operation_id(link.to), |l, (k, v)| {
                        l.parameter(*k, *v)
                    });
                ok.links.insert(link.name.to_owned(), built.build().into());
            }
        }
    }
}

/// The rendered description, set once the router is built.
#[derive(Clone, Default)]
pub(super) struct Document(Arc<OnceLock<Bytes>>);

impl Document {
    /// Finishes `api` (see [`finish`]) and keeps it as JSON.
    pub(super) fn set(&self, mut api: OpenApi) {
        finish(&mut api);
        let json = serde_json::to_vec(&api).expect("an OpenAPI document serializes");
        // Set once: the router that serves it is built once.
        let _ = self.0.set(Bytes::from(json));
    }
}

/// The route of `GET /openapi.json`, serving `doc`.
pub(super) fn routes(doc: Document) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(document))
        .route_layer(Extension(doc))
}

/// This description: the operations of this node.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((
        status = 200,
        description = "The OpenAPI 3.1 description",
        content_type = "application/json",
        body = Object,
    )),
)]
async fn document(Extension(doc): Extension<Document>) -> Response {
    match doc.0.get() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        None => {
            ApiError::new(ErrorCode::Internal, "the description is not built yet").into_response()
        }
    }
}

/// The `{}` of calls that answer nothing more.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_an_error_answer_of_its_status() {
        let statuses: Vec<u16> = error_components().iter().map(|(s, _, _)| *s).collect();
        for code in CODES {
            assert!(statuses.contains(&code.http_status()), "{code:?}");
        }
        for status in statuses {
            assert!(
                CODES.iter().any(|c| c.http_status() == status),
                "{status} carries no code"
            );
        }
    }

    #[test]
    fn catch_all_segments_become_plain_parameters_and_admin_ids_are_prefixed() {
        let mut api = base();
        let mut op = Operation::new();
        op.operation_id = Some("remove".into());
        let mut item = PathItem::default();
        item.delete = Some(op);
        api.paths
            .paths
            .insert("/admin/v1/blacklist/{kind}/{*value}".into(), item);
        finish(&mut api);
        let item = &api.paths.paths["/admin/v1/blacklist/{kind}/{value}"];
        let op = item.delete.as_ref().unwrap();
        assert_eq!(op.operation_id.as_deref(), Some("admin_remove"));
        for status in ["401", "403", "500"] {
            assert!(op.responses.responses.contains_key(status), "{status}");
        }
    }
}
