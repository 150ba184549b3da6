// Package browsertest drives the inbox dashboard in headless Chromium, as
// an operator would. It is a module of its own so that chromedp stays out
// of the library's dependencies; its only content is the test.
//
//	cd dashboard/browsertest && go test ./...
//
// The test needs the chromium binary (Debian package chromium); without it
// the test skips, unless CI is set, when it fails. With
// -screenshots DIR it saves its screenshots there (the project's docs/
// ones come from -screenshots ../../docs).
package browsertest
