package imdsreq

import (
	"errors"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	cases := map[string]Route{
		"/metadata/identity/oauth2/token":       RouteToken,
		"/METADATA/identity/oauth2/token/":      RouteToken,
		"/metadata/identity/oauth2/tokenx":      RouteToken,
		"/metadata/identity//oauth2/token":      RouteInvalidToken,
		"/metadata/Identity/oauth2/token":       RouteInvalidToken,
		`/metadata\identity\oauth2\token`:       RouteInvalidToken,
		"/foo/metadata/identity/oauth2/token":   RouteInvalidToken,
		"/host/token":                           RouteHostToken,
		"/host/token/":                          RouteHostToken,
		"/metadata/instance":                    RouteProxy,
		"/metadata/instance/compute?x":          RouteProxy,
		"/":                                     RouteProxy,
		"/metadata/identity/oauth2/token/../..": RouteInvalidToken,
	}
	for p, want := range cases {
		if got := Classify(p, "", false); got != want {
			t.Errorf("%q: %v, want %v", p, got, want)
		}
	}
	if got := Classify("/Metadata/instance/compute", "", true); got != RouteBlocked {
		t.Errorf("blocked: %v", got)
	}
	if got := Classify("/metadata/identity/oauth2/token", "/metadata/identity/oauth2%2Ftoken", false); got != RouteInvalidToken {
		t.Errorf("escaped: %v", got)
	}
}

func FuzzParseTokenQuery(f *testing.F) {
	for _, s := range []string{
		"api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F",
		"resource=x&client_id=00000000-0000-0000-0000-000000000000",
		"resource=x&mi_res_id=%2Fsubscriptions%2Fs&msi_res_id=%2Fsubscriptions%2Fs",
		"resource=x&resource=y", "resource=%zz", "=&&&=", "resource=" + strings.Repeat("a", 5000),
		"resource=x&object_id=a;b", "client_id=&resource=x", "resource=%00%ff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := ParseTokenQuery(raw)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not wrap ErrBadRequest", err)
			}
			return
		}
		if q.Resource == "" || len(raw) > MaxQueryLen {
			t.Fatalf("accepted %q as %+v", raw, q)
		}
		for _, v := range []string{q.Resource, q.ClientID, q.ResourceID, q.ObjectID} {
			if len(v) > MaxParamLen {
				t.Fatalf("value over limit accepted")
			}
		}
	})
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{"/metadata/identity/oauth2/token", "/metadata/identity\\oauth2\\token", "/host/token", "/metadata/instance", "/x//y/../z"} {
		f.Add(s, "", true)
	}
	f.Fuzz(func(t *testing.T, p, raw string, block bool) {
		r := Classify(p, raw, block)
		// Anything that spells the token path, in any case or with junk between its words, must
		// never be proxied to IMDS.
		if r == RouteProxy && ObfuscatedToken.MatchString(p) {
			t.Fatalf("%q would be proxied", p)
		}
	})
}
