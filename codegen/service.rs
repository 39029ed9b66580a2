//! The prost `ServiceGenerator` of rdma-rpc: for every service in a .proto file it emits
//! - `<Service>Client<T>`: a typed client over `rdma_rpc::rpc::Client<T>`, one method per RPC;
//! - `<Service>DirectClient`: blocking unary calls over a run-to-completion RDMA connection;
//! - `<Service>InlineClient<T>`: async unary calls that run in the caller's task, over any
//!   transport;
//! - `<Service>`: the server trait to implement, one method per RPC;
//! - `<Service>Server<S>`: the adapter that routes calls to the trait (`rdma_rpc::rpc::Service`).
//!
//! The shape of each method follows the RPC's streaming mode, so adding an RPC to a .proto file is
//! all it takes to call and serve it.

use std::fmt::Write as _;

use prost_build::{Method, Service, ServiceGenerator};

/// Emits clients and server traits into the generated module.
pub struct ServiceGen;

impl ServiceGenerator for ServiceGen {
    fn generate(&mut self, service: Service, buf: &mut String) {
        let full_name = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        let docs = doc_lines(&service.comments.leading, "");
        let name = &service.name;
        let path = |m: &Method| format!("/{full_name}/{}", m.proto_name);

        // Client.
        let _ = writeln!(buf, "{docs}/// Typed client for `{full_name}`.");
        let _ = writeln!(buf, "pub struct {name}Client<T: ::rdma_rpc::transport::Transport> {{");
        let _ = writeln!(buf, "    inner: ::rdma_rpc::rpc::Client<T>,\n}}\n");
        let _ = writeln!(buf, "impl<T: ::rdma_rpc::transport::Transport> ::core::clone::Clone for {name}Client<T> {{");
        let _ = writeln!(buf, "    fn clone(&self) -> Self {{ Self {{ inner: self.inner.clone() }} }}\n}}\n");
        let _ = writeln!(buf, "impl<T: ::rdma_rpc::transport::Transport> {name}Client<T> {{");
        let _ = writeln!(buf, "    /// Wraps a connected client.");
        let _ = writeln!(buf, "    pub fn new(inner: ::rdma_rpc::rpc::Client<T>) -> Self {{ Self {{ inner }} }}\n");
        let _ = writeln!(buf, "    /// The untyped client underneath.");
        let _ = writeln!(buf, "    pub fn inner(&self) -> &::rdma_rpc::rpc::Client<T> {{ &self.inner }}\n");
        for m in &service.methods {
            let docs = doc_lines(&m.comments.leading, "    ");
            let (input, output, p, method) = (&m.input_type, &m.output_type, path(m), &m.name);
            let _ = write!(buf, "{docs}");
            match (m.client_streaming, m.server_streaming) {
                (false, false) => {
                    let _ = writeln!(
                        buf,
                        "    pub async fn {method}(&self, request: &{input}) -> ::core::result::Result<{output}, ::rdma_rpc::Status> {{"
                    );
                    let _ = writeln!(buf, "        self.inner.unary(\"{p}\", request).await\n    }}\n");
                }
                (false, true) => {
                    let _ = writeln!(
                        buf,
                        "    pub async fn {method}(&self, request: &{input}) -> ::core::result::Result<::rdma_rpc::rpc::CallReceiver<{output}>, ::rdma_rpc::Status> {{"
                    );
                    let _ = writeln!(buf, "        self.inner.server_streaming(\"{p}\", request).await\n    }}\n");
                }
                (true, _) => {
                    let _ = writeln!(
                        buf,
                        "    pub async fn {method}(&self) -> ::core::result::Result<(::rdma_rpc::rpc::CallSender<T, {input}>, ::rdma_rpc::rpc::CallReceiver<{output}>), ::rdma_rpc::Status> {{"
                    );
                    let _ = writeln!(buf, "        self.inner.streaming(\"{p}\").await\n    }}\n");
                }
            }
        }
        let _ = writeln!(buf, "}}\n");
        write_owned_client(buf, &service, &full_name, OwnedClient::Direct);
        write_owned_client(buf, &service, &full_name, OwnedClient::Inline);

        // Server trait.
        let _ = writeln!(
            buf,
            "{docs}/// Server side of `{full_name}`: implement it and serve it with `{name}Server::new`."
        );
        let _ = writeln!(buf, "pub trait {name}: ::core::marker::Send + ::core::marker::Sync + 'static {{");
        for m in &service.methods {
            let docs = doc_lines(&m.comments.leading, "    ");
            let (input, output, method) = (&m.input_type, &m.output_type, &m.name);
            let ctx = "ctx: ::rdma_rpc::rpc::RequestContext";
            let (args, ret) = match (m.client_streaming, m.server_streaming) {
                (false, false) => (format!("request: {input}, {ctx}"), output.to_string()),
                (false, true) => (
                    format!("request: {input}, responses: ::rdma_rpc::rpc::ResponseSender<{output}>, {ctx}"),
                    "()".to_string(),
                ),
                (true, false) => {
                    (format!("requests: ::rdma_rpc::rpc::CallReceiver<{input}>, {ctx}"), output.to_string())
                }
                (true, true) => (
                    format!(
                        "requests: ::rdma_rpc::rpc::CallReceiver<{input}>, responses: ::rdma_rpc::rpc::ResponseSender<{output}>, {ctx}"
                    ),
                    "()".to_string(),
                ),
            };
            let _ = writeln!(
                buf,
                "{docs}    fn {method}(&self, {args}) -> impl ::core::future::Future<Output = ::core::result::Result<{ret}, ::rdma_rpc::Status>> + ::core::marker::Send;"
            );
        }
        let _ = writeln!(buf, "}}\n");

        // Router adapter.
        let _ = writeln!(buf, "/// Routes calls of `{full_name}` to an implementation of [`{name}`].");
        let _ = writeln!(buf, "pub struct {name}Server<S: {name}>(::std::sync::Arc<S>);\n");
        let _ = writeln!(buf, "impl<S: {name}> {name}Server<S> {{");
        let _ = writeln!(buf, "    /// Serves `service`.");
        let _ = writeln!(buf, "    pub fn new(service: S) -> Self {{ Self(::std::sync::Arc::new(service)) }}\n");
        let _ = writeln!(buf, "    /// Serves a shared `service`.");
        let _ = writeln!(buf, "    pub fn from_arc(service: ::std::sync::Arc<S>) -> Self {{ Self(service) }}\n}}\n");
        let _ = writeln!(buf, "impl<S: {name}> ::rdma_rpc::rpc::Service for {name}Server<S> {{");
        let _ = writeln!(buf, "    fn name(&self) -> &'static str {{ \"{full_name}\" }}\n");
        let paths: Vec<String> = service.methods.iter().map(|m| format!("\"{}\"", path(m))).collect();
        let _ = writeln!(buf, "    fn methods(&self) -> &'static [&'static str] {{ &[{}] }}\n", paths.join(", "));
        let all: Vec<&Method> = service.methods.iter().collect();
        write_method_match(
            buf,
            &all,
            &path,
            "call(&self, method: &str, call: ::rdma_rpc::rpc::ServerCall) -> ::core::result::Result<::rdma_rpc::rpc::HandlerFuture, ::rdma_rpc::rpc::ServerCall>",
            |_, serve| format!("Ok(::std::boxed::Box::pin({serve}))"),
            "Err(call)",
        );
        // The same handlers in reusable slots: no future is boxed per call.
        write_method_match(
            buf,
            &all,
            &path,
            "slot(&self, method: &str) -> ::core::option::Option<::std::boxed::Box<dyn ::rdma_rpc::rpc::HandlerSlot>>",
            |_, serve| {
                format!(
                    "Some(::rdma_rpc::rpc::handler_slot(move |call| {{ let service = ::std::sync::Arc::clone(&service); {serve} }}))"
                )
            },
            "None",
        );
        // Unary methods again, run to completion when the request comes whole with the call.
        let unary: Vec<&Method> =
            service.methods.iter().filter(|m| !m.client_streaming && !m.server_streaming).collect();
        write_method_match(
            buf,
            &unary,
            &path,
            "unary_slot(&self, method: &str) -> ::core::option::Option<::std::boxed::Box<dyn ::rdma_rpc::rpc::UnarySlot>>",
            |m, _| {
                format!(
                    "Some(::rdma_rpc::rpc::unary_slot(move |request, ctx| {{ let service = ::std::sync::Arc::clone(&service); async move {{ service.{}(request, ctx).await }} }}))",
                    m.name
                )
            },
            "None",
        );
        let _ = writeln!(buf, "}}\n");
    }
}

/// The two clients whose calls run in the caller, one at a time (`rdma_rpc::rpc::direct`).
#[derive(Clone, Copy)]
enum OwnedClient {
    /// `<Service>DirectClient`: blocking calls over a run-to-completion RDMA connection.
    Direct,
    /// `<Service>InlineClient<T>`: async calls in the caller's task, over any transport.
    Inline,
}

/// Writes `<Service>DirectClient` or `<Service>InlineClient<T>`: the unary methods (these clients
/// have no streaming calls) around `rdma_rpc::rpc::direct::DirectClient` or `InlineClient<T>`.
fn write_owned_client(buf: &mut String, service: &Service, full_name: &str, kind: OwnedClient) {
    let name = &service.name;
    let (doc, ty, generics, inner, asyncness, wait) = match kind {
        OwnedClient::Direct => (
            format!(
                "/// Blocking client for the unary methods of `{full_name}` over a run-to-completion RDMA connection:\n\
                 /// each call polls the connection's completion queue from the calling thread until its reply."
            ),
            format!("{name}DirectClient"),
            "",
            "::rdma_rpc::rpc::direct::DirectClient",
            "",
            "",
        ),
        OwnedClient::Inline => (
            format!(
                "/// Client for the unary methods of `{full_name}` whose calls run in the calling task, one at a time:\n\
                 /// it writes the request and reads the reply itself, with no driver task in between."
            ),
            format!("{name}InlineClient"),
            "<T: ::rdma_rpc::transport::Transport>",
            "::rdma_rpc::rpc::direct::InlineClient<T>",
            "async ",
            ".await",
        ),
    };
    let args = if generics.is_empty() { "" } else { "<T>" };
    let _ = writeln!(buf, "{doc}");
    let _ = writeln!(buf, "#[derive(Debug)]\npub struct {ty}{generics} {{\n    inner: {inner},\n}}\n");
    let _ = writeln!(buf, "impl{generics} {ty}{args} {{");
    let _ = writeln!(buf, "    /// Wraps a connected client.");
    let _ = writeln!(buf, "    pub fn new(inner: {inner}) -> Self {{ Self {{ inner }} }}\n");
    let _ = writeln!(buf, "    /// The untyped client underneath (timeouts, metadata).");
    let _ = writeln!(buf, "    pub fn inner_mut(&mut self) -> &mut {inner} {{ &mut self.inner }}\n");
    let _ = writeln!(buf, "    /// The untyped client back.");
    let _ = writeln!(buf, "    pub fn into_inner(self) -> {inner} {{ self.inner }}\n");
    for m in service.methods.iter().filter(|m| !m.client_streaming && !m.server_streaming) {
        let docs = doc_lines(&m.comments.leading, "    ");
        let (input, output, method) = (&m.input_type, &m.output_type, &m.name);
        let _ = write!(buf, "{docs}");
        let _ = writeln!(
            buf,
            "    pub {asyncness}fn {method}(&mut self, request: &{input}) -> ::core::result::Result<{output}, ::rdma_rpc::Status> {{"
        );
        let _ = writeln!(buf, "        self.inner.unary(\"/{full_name}/{}\", request){wait}\n    }}\n", m.proto_name);
    }
    let _ = writeln!(buf, "}}\n");
}

/// Writes `fn {signature}` of a service adapter: a match on the method path with one arm per
/// method of `methods`, `arm` given the method and the expression that serves a call to it (its
/// server helper around the trait method), and `fallback` for any other path.
fn write_method_match(
    buf: &mut String,
    methods: &[&Method],
    path: &dyn Fn(&Method) -> String,
    signature: &str,
    arm: impl Fn(&Method, &str) -> String,
    fallback: &str,
) {
    let _ = writeln!(buf, "    fn {signature} {{");
    let _ = writeln!(buf, "        let service = ::std::sync::Arc::clone(&self.0);");
    let _ = writeln!(buf, "        match method {{");
    for m in methods {
        let (p, method) = (path(m), &m.name);
        let (helper, params, args) = helper_of(m);
        let serve =
            format!("::rdma_rpc::rpc::{helper}(call, move |{params}| async move {{ service.{method}({args}).await }})");
        let _ = writeln!(buf, "            \"{p}\" => {},", arm(m, &serve));
    }
    let _ = writeln!(buf, "            _ => {{ let _ = service; {fallback} }}");
    let _ = writeln!(buf, "        }}\n    }}\n");
}

/// The server helper a method's kind needs, with the handler closure's parameters and the
/// arguments it passes on.
fn helper_of(m: &Method) -> (&'static str, &'static str, &'static str) {
    match (m.client_streaming, m.server_streaming) {
        (false, false) => ("serve_unary", "request, ctx", "request, ctx"),
        (false, true) => ("serve_server_streaming", "request, responses, ctx", "request, responses, ctx"),
        (true, false) => ("serve_client_streaming", "requests, ctx", "requests, ctx"),
        (true, true) => ("serve_streaming", "requests, responses, ctx", "requests, responses, ctx"),
    }
}

fn doc_lines(comments: &[String], indent: &str) -> String {
    let mut out = String::new();
    for comment in comments {
        for line in comment.lines() {
            let _ = writeln!(
                out,
                "{indent}///{}",
                if line.is_empty() { String::new() } else { format!(" {}", line.trim_end()) }
            );
        }
    }
    out
}
