// Package dashboard serves a web dashboard for operators of an inbox: an
// http.Handler to mount in a service's own mux, or to run standalone with
// `inboxctl ui`.
//
// # Pages
//
//   - Overview: per topic the pending, ready, scheduled, running, done and
//     dead counts, the oldest pending age and the messages processed per
//     minute; a chart of the last hour; parked streams and streams waiting
//     on a gap; with Options.Outbox, the outbox's pending, oldest pending,
//     sent in the last minute and dead (inboxctl ui adds it when the schema
//     has outbox tables).
//   - Dead messages: grouped by failure (the error text with numbers, UUIDs
//     and hex IDs masked), with counts; filters by topic, error text and
//     time; one message in detail (headers, attempts, last error, the start
//     of its body as text); retry or delete one message or a whole group.
//   - Streams: parked, waiting on a gap (since when, which sequence numbers
//     are missing), deepest backlogs; one stream in detail (watermark,
//     head, pending, last skip); retry or skip.
//
// Every count on a large table stops at a cap, shown as "≥", or is taken
// over a bounded sample, which the page says; lists page by key, never by
// OFFSET. The pages are rendered on the server and work without
// JavaScript; a small script refreshes them every few seconds.
//
// # Mounting and authentication
//
// The dashboard has no login of its own: who may see it, and who may act,
// is the embedding application's decision. Wrap the handler in the
// service's own authentication, and mount it under a prefix given in
// Options.Prefix:
//
//	ui, err := dashboard.New(in, dashboard.Options{Prefix: "/ops/inbox"})
//	if err != nil {
//		return err
//	}
//	mux.Handle("/ops/inbox/", requireOperator(ui))
//
// where requireOperator is any func(http.Handler) http.Handler that
// answers 401 or 403 before calling the dashboard, for example:
//
//	func requireOperator(next http.Handler) http.Handler {
//		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//			user, pass, ok := r.BasicAuth()
//			if !ok || !validOperator(user, pass) {
//				w.Header().Set("WWW-Authenticate", `Basic realm="inbox"`)
//				http.Error(w, "unauthorized", http.StatusUnauthorized)
//				return
//			}
//			next.ServeHTTP(w, r)
//		})
//	}
//
// Give people who should only look a handler made with Options.ReadOnly,
// mounted elsewhere or chosen by the wrapper. See examples/dashboard for a
// service that does this.
//
// # Safety
//
// Actions (retry, delete, skip) are POST only, carry a CSRF token (a
// per-browser cookie and its HMAC under a key of the handler), and take
// effect only after a confirmation page. With Options.ReadOnly the pages
// show no actions and the handler refuses them. Every string that comes
// from a message (IDs, topics, headers, errors, bodies) is escaped by
// html/template; bodies are shown as text, at most BodyPreviewBytes of
// them. The pages never show the database's address or credentials. All
// assets are embedded: the pages load nothing from other origins, and a
// Content-Security-Policy header says so to the browser.
package dashboard
