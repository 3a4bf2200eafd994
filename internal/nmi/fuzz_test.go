package nmi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// Fuzz targets for every parser on NMI's token path that lives in this package (issue #11);
// imdsreq has its own. Each checks a security or robustness property, not only "no panic".

const (
	fzRID = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/demo"
	fzCID = "11111111-2222-3333-4444-555555555555"
	// fzDescMax bounds an error description built from upstream input (NMI clips to 256 bytes;
	// the rest is NMI's own wording and the identity's spec).
	fzDescMax = 1024
)

var fzStopped sync.Once

// fzNoControlPlane stops TestMain's control plane in a fuzz worker process: the fuzzing engine
// kills a worker that takes over 2 s to exit (the control plane's shutdown does), and the
// orphaned etcd then holds the worker's pipes, which hangs `go test -fuzz` for ever. No target
// needs an API server.
func fzNoControlPlane() {
	if fl := flag.Lookup("test.fuzzworker"); fl != nil && fl.Value.String() == "true" && env != nil {
		fzStopped.Do(func() { _ = env.Stop() })
	}
}

func fzJWT(payload []byte) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc(payload) + ".c2ln"
}

func fzClaims(mirid, appid, extra string) []byte {
	return []byte(fmt.Sprintf(`{"aud":"https://management.azure.com/","oid":"9999","xms_mirid":%q,"appid":%q%s}`, mirid, appid, extra))
}

func fzTokenBody(jwt string) []byte {
	on := strconv.FormatInt(time.Now().Add(24*time.Hour).Unix(), 10) // NMI refuses implausible expiries
	return []byte(`{"access_token":"` + jwt + `","client_id":"` + fzCID + `","expires_in":"86399","expires_on":"` + on + `","ext_expires_in":"86399","not_before":"1800000000","resource":"https://management.azure.com/","token_type":"Bearer"}`)
}

func fzIdentity(rid, cid string) *aadv1.AzureIdentity {
	return &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "id"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: rid, ClientID: cid}}
}

func FuzzIMDSAnswer(f *testing.F) {
	fzNoControlPlane()
	good := fzTokenBody(fzJWT(fzClaims(fzRID, fzCID, "")))
	f.Add(200, "", good, fzRID, fzCID)
	f.Add(200, "", good, strings.ToUpper(fzRID), fzCID)
	f.Add(200, "", fzTokenBody(fzJWT(fzClaims(fzRID+"2", fzCID, ""))), fzRID, fzCID)
	f.Add(200, "", fzTokenBody(fzJWT(fzClaims(fzRID, "other", `,"azp":"`+fzCID+`"`))), fzRID, fzCID)
	f.Add(200, "", fzTokenBody(fzJWT([]byte(`{"xms_mirid":"`+fzRID+`","azp":"`+fzCID+`"}`))), fzRID, fzCID)
	f.Add(200, "", []byte(`{"access_token":"a.b.c","expires_in":3599}`), fzRID, fzCID)
	f.Add(200, "", []byte(`{"access_token":"x","expires_on":"abc"}`), fzRID, fzCID)
	f.Add(200, "", []byte(`[]`), fzRID, fzCID)
	f.Add(400, "", []byte(`{"error":"invalid_request","error_description":"Identity not found"}`), fzRID, fzCID)
	f.Add(429, "30", []byte(`{"error":"too_many_requests","error_description":"Too many requests"}`), fzRID, fzCID)
	f.Add(429, "-5", []byte(`Too many requests`), fzRID, fzCID)
	f.Add(500, "922337203", []byte(strings.Repeat("x", 600)), fzRID, fzCID)
	f.Add(503, "", []byte(`{"error":"`+strings.Repeat("e", 300)+`"}`), fzRID, fzCID)
	f.Fuzz(func(t *testing.T, status int, retryAfter string, body []byte, rid, cid string) {
		if rid == "" || cid == "" {
			return // Fetch refuses such identities before asking IMDS
		}
		id := fzIdentity(rid, cid)
		toks, err := imdsAnswer(status, retryAfter, body, id, "https://management.azure.com/")
		if err == nil {
			if status != http.StatusOK || len(toks) != 1 {
				t.Fatalf("status %d: %d tokens and no error", status, len(toks))
			}
			tok := toks[0]
			c := claimsOf(tok.AccessToken)
			if tok.ClientID != cid || !c.parsedOK || !strings.EqualFold(c.MIResID, rid) || !strings.EqualFold(c.clientID(), cid) {
				t.Fatalf("served a token not for %s/%s: client %q, claims %+v", rid, cid, tok.ClientID, c)
			}
			if tok.ExpiresOn.IsZero() || tok.TokenType == "" || tok.Resource == "" {
				t.Fatalf("incomplete token %+v", tok)
			}
			return
		}
		var ue *UpstreamError
		if errors.As(err, &ue) {
			if ue.RetryAfter < 0 || ue.RetryAfter > 10*time.Minute {
				t.Fatalf("Retry-After %q became %s", retryAfter, ue.RetryAfter)
			}
		}
		if max := fzDescMax + 2*(len(strconv.Quote(rid))+len(strconv.Quote(cid))); len(err.Error()) > max { // the spec is quoted with %q
			t.Fatalf("error is %d bytes (max %d): %.200s...", len(err.Error()), max, err.Error())
		}
	})
}

// FuzzVerifyClaims mutates the token's claims as JSON (not as base64) so that the fuzzer works
// on their structure: verifyManagedIdentity may accept only a token that names the identity.
func FuzzVerifyClaims(f *testing.F) {
	fzNoControlPlane()
	f.Add(fzClaims(fzRID, fzCID, ""), fzRID, fzCID, "")
	f.Add(fzClaims(fzRID, fzCID, ""), fzRID, fzCID, fzCID)
	f.Add(fzClaims(fzRID, fzCID, ""), fzRID, fzCID, "other")
	f.Add(fzClaims(strings.ToLower(fzRID), strings.ToUpper(fzCID), ""), fzRID, fzCID, "")
	f.Add(fzClaims("/other", fzCID, ""), fzRID, fzCID, "")
	f.Add([]byte(`{"xms_mirid":"`+fzRID+`","azp":"`+fzCID+`"}`), fzRID, fzCID, "")
	f.Add([]byte(`{"XMS_MIRID":"`+fzRID+`","AppID":"`+fzCID+`","xms_mirid":"/x"}`), fzRID, fzCID, "")
	f.Add([]byte(`{"xms_mirid":["`+fzRID+`"],"appid":null}`), fzRID, fzCID, "")
	f.Add([]byte(`null`), fzRID, fzCID, "")
	f.Fuzz(func(t *testing.T, payload []byte, rid, cid, answerCID string) {
		if rid == "" || cid == "" {
			return
		}
		claimsOf(string(payload)) // also a raw (non-JWT) access token: must not panic
		jwt := fzJWT(payload)
		err := verifyManagedIdentity(Token{AccessToken: jwt, ClientID: answerCID}, fzIdentity(rid, cid), "IMDS")
		if err != nil {
			if !errors.Is(err, ErrIdentityMismatch) {
				t.Fatalf("refusal %v is not ErrIdentityMismatch", err)
			}
			return
		}
		// Independent reading: some spelling of each claim the decoder could have used must match.
		var m map[string]any
		if json.Unmarshal(payload, &m) != nil {
			t.Fatalf("accepted claims that are not a JSON object: %q", payload)
		}
		has := func(v string, names ...string) bool {
			for k, x := range m {
				for _, n := range names {
					if s, ok := x.(string); ok && strings.EqualFold(k, n) && strings.EqualFold(s, v) {
						return true
					}
				}
			}
			return false
		}
		if !has(rid, "xms_mirid") || !has(cid, "appid", "azp") {
			t.Fatalf("accepted claims %q for %s/%s", payload, rid, cid)
		}
		if answerCID != "" && !strings.EqualFold(answerCID, cid) {
			t.Fatalf("accepted client_id %q for %q", answerCID, cid)
		}
	})
}

func FuzzParseTokenJSON(f *testing.F) {
	fzNoControlPlane()
	f.Add(fzTokenBody(fzJWT(fzClaims(fzRID, fzCID, ""))), "https://management.azure.com/")
	f.Add([]byte(`{"access_token":"t","expires_in":3599,"token_type":"Bearer"}`), "r")
	f.Add([]byte(`{"access_token":"t","expires_on":"1e3"}`), "r")
	f.Add([]byte(`{"access_token":"t","expires_on":-1,"expires_in":"10"}`), "")
	f.Add([]byte(`{"access_token":"t","expires_in":"9223372036"}`), "r")
	f.Add([]byte(`{"access_token":1}`), "r")
	f.Fuzz(func(t *testing.T, body []byte, resource string) {
		tok, err := parseTokenJSON(body, resource)
		if err != nil {
			if len(err.Error()) > fzDescMax {
				t.Fatalf("error is %d bytes", len(err.Error()))
			}
			return
		}
		if tok.AccessToken == "" || tok.TokenType == "" || (resource != "" && tok.Resource == "") {
			t.Fatalf("incomplete token %+v from %q", tok, body)
		}
		if tok.ExpiresOn.Unix() <= 0 || tok.ExpiresOn.After(time.Now().Add(7*24*time.Hour+time.Minute)) {
			t.Fatalf("expiry %s from %q", tok.ExpiresOn, body)
		}
		if tok.NotBefore.IsZero() {
			t.Fatalf("no not_before from %q", body)
		}
		if tok.ObjectID != claimsOf(tok.AccessToken).OID {
			t.Fatalf("object ID %q not from the token", tok.ObjectID)
		}
	})
}

// FuzzAADError feeds azidentity's own error type an Azure AD answer of any content: the
// description a pod sees must stay short and on one line.
func FuzzAADError(f *testing.F) {
	fzNoControlPlane()
	f.Add(400, []byte(`{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x\r\nTimestamp: 2026-01-01"}`), "")
	f.Add(401, []byte(`not json`), "")
	f.Add(500, []byte("line1\nline2\n---\nTo troubleshoot, visit x\nline5"), "")
	f.Add(0, []byte(nil), "ClientSecretCredential: unable to resolve an endpoint: dial tcp: lookup x: no such host")
	f.Add(0, []byte(nil), "\n\n  \n---")
	f.Fuzz(func(t *testing.T, status int, body []byte, msg string) {
		var err error
		if msg == "" {
			resp := &http.Response{StatusCode: status, Status: strconv.Itoa(status), Header: http.Header{},
				Body: io.NopCloser(bytes.NewReader(body))}
			err = &azidentity.AuthenticationFailedError{RawResponse: resp}
		} else {
			err = errors.New(msg)
		}
		full := err.Error()
		out := aadError(err, fzIdentity(fzRID, fzCID), "tenant")
		var ue *UpstreamError
		if !errors.As(out, &ue) || ue.Service != "aad" {
			t.Fatalf("not an Azure AD UpstreamError: %#v", out)
		}
		fl := firstLine(full)
		if strings.Contains(fl, "\n") || len(fl) > len(full)+3 {
			t.Fatalf("firstLine(%q) = %q", full, fl)
		}
		if len(ue.Description) > fzDescMax {
			t.Fatalf("description is %d bytes: %.200s...", len(ue.Description), ue.Description)
		}
	})
}

// FuzzRenderToken: the token answer NMI writes is valid JSON that reads back as the token,
// whatever the fields hold (single token, tenant array, and /host/token's wrapping).
func FuzzRenderToken(f *testing.F) {
	fzNoControlPlane()
	f.Add("eyJ0eXAi.eyJhdWQi.c2ln", fzCID, "https://management.azure.com/", "Bearer", int64(1900000000), int64(1800000000), false)
	f.Add("\"}\\\x00\u2028<>&", "\xff\xfe", "r\"", "", int64(-1), int64(math.MaxInt64), true)
	f.Add("", "", "", "", int64(math.MinInt64), int64(0), true)
	f.Add("0", "\xd7", "\xbc", "0", int64(1899999864), int64(1800000000), true) // valid only when joined
	f.Fuzz(func(t *testing.T, at, cid, res, typ string, exp, nb int64, two bool) {
		tok := Token{AccessToken: at, ClientID: cid, Resource: res, TokenType: typ, ExpiresOn: time.Unix(exp, 0), NotBefore: time.Unix(nb, 0)}
		toks := []Token{tok}
		if two {
			toks = append(toks, tok)
		}
		e := newEntry(toks, nil)
		body := e.appendBody(nil, time.Now())
		host := append(e.appendToken([]byte(`{"token":`), 0, time.Now()), `,"clientid":`...)
		host = append(append(host, jsonString(cid)...), '}')
		for _, b := range [][]byte{body, host} {
			if !json.Valid(b) {
				t.Fatalf("invalid JSON %q", b)
			}
		}
		var got []map[string]string
		if two {
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
		} else {
			got = make([]map[string]string, 1)
			if err := json.Unmarshal(body, &got[0]); err != nil {
				t.Fatal(err)
			}
		}
		for _, g := range got {
			in, err := strconv.ParseInt(g["expires_in"], 10, 64)
			if err != nil || in < 0 || g["expires_on"] != strconv.FormatInt(exp, 10) {
				t.Fatalf("numbers %v for expiry %d", g, exp)
			}
			// Invalid UTF-8 reads back as U+FFFD: compare only fields that are valid on their own.
			valid := utf8.ValidString(at) && utf8.ValidString(cid) && utf8.ValidString(res) && utf8.ValidString(typ)
			if valid && (g["access_token"] != at || g["client_id"] != cid || g["resource"] != res || g["token_type"] != typ) {
				t.Fatalf("read back %v", g)
			}
		}
	})
}

// FuzzAuthorities: an adEndpoint is allowed only when it is https and its host is an allowed one.
func FuzzAuthorities(f *testing.F) {
	fzNoControlPlane()
	for _, s := range []string{
		"https://login.microsoftonline.com/", "https://LOGIN.microsoftonline.com", "login.microsoftonline.com",
		"http://login.microsoftonline.com/", "https://login.microsoftonline.com:443/", "https://login.microsoftonline.com.attacker.example/",
		"https://attacker.example/", "https://login.microsoftonline.com@attacker.example/", "https://attacker.example#@login.microsoftonline.com",
		"https://login.microsoftonline.com/tenant", "https://login.microsoftonline.com/?x", "https://[::1]:8443/", "HTTPS://sts.example.com/",
		"https://login.microsoftonline.com\\@attacker.example/", "//login.microsoftonline.com",
	} {
		f.Add(s, "sts.example.com")
	}
	f.Fuzz(func(t *testing.T, endpoint, extra string) {
		a, err := newAuthorities(DefaultAuthorityHost, []string{extra})
		if err != nil {
			if a, err = newAuthorities(DefaultAuthorityHost, nil); err != nil {
				t.Fatal(err)
			}
		}
		if !a.allows(endpoint) {
			return
		}
		s := endpoint
		if !strings.Contains(s, "://") {
			s = "https://" + s // a bare host is documented to mean https
		}
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.User != nil || u.Opaque != "" {
			t.Fatalf("allowed %q (parsed %#v, %v)", endpoint, u, err)
		}
		if strings.EqualFold(u.Host, "login.microsoftonline.com") {
			return
		}
		if !strings.Contains(extra, "://") {
			extra = "https://" + extra
		}
		if x, err := url.Parse(extra); err == nil && x.Scheme == "https" && x.Host != "" && strings.EqualFold(u.Host, x.Host) {
			return
		}
		t.Fatalf("allowed %q: host %q is not an allowed one (extra %q)", endpoint, u.Host, extra)
	})
}

// Regression tests for what these targets found (fixed in a400cf8): each fails on the code before.

// F1: imdsAnswer turns Retry-After: 9223372037 into a negative duration.
func TestIMDSAnswerRetryAfterOverflow(t *testing.T) {
	_, err := imdsAnswer(429, "9223372037", []byte(`{"error":"too_many_requests"}`), fzIdentity(fzRID, fzCID), "r")
	var ue *UpstreamError
	if !errors.As(err, &ue) || ue.RetryAfter < 0 || ue.RetryAfter > 10*time.Minute {
		t.Fatalf("Retry-After 9223372037 gave %v (want 0 < RetryAfter <= 10m)", err)
	}
}

// F2, F3: a 200 answer from IMDS makes an error description as long as IMDS's answer.
func TestIMDSAnswerDescriptionBounded(t *testing.T) {
	long := strings.Repeat("A", 100000)
	for name, body := range map[string][]byte{
		"expires_in": []byte(`{"access_token":"t","expires_in":"` + long + `"}`),
		"xms_mirid":  fzTokenBody(fzJWT(fzClaims(long, fzCID, ""))),
		"appid":      fzTokenBody(fzJWT(fzClaims(fzRID, long, ""))),
	} {
		if _, err := imdsAnswer(200, "", body, fzIdentity(fzRID, fzCID), "r"); err == nil || len(err.Error()) > fzDescMax {
			t.Errorf("%s: error of %d bytes (max %d)", name, len(fmt.Sprint(err)), fzDescMax)
		}
	}
}

// F4: expires_in beyond time.Duration's range gives a token that expired centuries ago.
func TestParseTokenJSONExpiresInOverflow(t *testing.T) {
	tok, err := parseTokenJSON([]byte(`{"access_token":"t","expires_in":"9223372037"}`), "r")
	if err == nil && tok.ExpiresOn.Before(time.Now()) {
		t.Fatalf("expires_in 9223372037 gave expiry %s", tok.ExpiresOn)
	}
}

// F5: aadError keeps an Azure AD answer that is not JSON in full.
func TestAADErrorDescriptionBounded(t *testing.T) {
	resp := &http.Response{StatusCode: 400, Status: "400 Bad Request", Header: http.Header{},
		Body: io.NopCloser(strings.NewReader(strings.Repeat("x", 100000)))}
	out := aadError(&azidentity.AuthenticationFailedError{RawResponse: resp}, fzIdentity(fzRID, fzCID), "")
	if n := len(out.Error()); n > fzDescMax {
		t.Fatalf("description of %d bytes (max %d)", n, fzDescMax)
	}
}
