package dashboard

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
)

// csrfCookie holds a random per-browser value; a form's token is its HMAC
// under the handler's key. A forged cross-site form cannot read the cookie
// to compute the token, and a token from another browser does not match
// this browser's cookie (double submit, signed).
const (
	csrfCookie = "inbox_dashboard_csrf"
	csrfField  = "csrf"
)

type csrf struct {
	key  []byte
	path string
}

// token returns the token for this browser's forms, setting its cookie
// first if it has none.
func (c csrf) token(w http.ResponseWriter, r *http.Request) string {
	if ck, err := r.Cookie(csrfCookie); err == nil && validNonce(ck.Value) {
		return c.sign(ck.Value)
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand documents it)
	nonce := hex.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{
		Name:     csrfCookie,
		Value:    nonce,
		Path:     c.path,
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteStrictMode,
	})
	return c.sign(nonce)
}

// valid tells whether the form's token matches the browser's cookie.
func (c csrf) valid(r *http.Request) bool {
	ck, err := r.Cookie(csrfCookie)
	if err != nil || !validNonce(ck.Value) {
		return false
	}
	got, err := hex.DecodeString(r.PostFormValue(csrfField))
	if err != nil {
		return false
	}
	want, _ := hex.DecodeString(c.sign(ck.Value))
	return hmac.Equal(got, want)
}

func (c csrf) sign(nonce string) string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte(nonce))
	return hex.EncodeToString(m.Sum(nil))
}

func validNonce(s string) bool {
	if len(s) != 32 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
