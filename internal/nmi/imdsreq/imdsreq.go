// Package imdsreq parses what callers send to NMI: which route a path asks for and the token
// request's query. It is pure (no I/O), so it is fuzzed on its own.
package imdsreq

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"
)

// Route is what a request path asks for, decided before anything else looks at the request.
type Route uint8

const (
	RouteProxy        Route = iota // anything else: forwarded to IMDS
	RouteToken                     // /metadata/identity/oauth2/token (pod traffic)
	RouteInvalidToken              // obfuscated spellings of the token path: refused, never proxied
	RouteHostToken                 // /host/token (node agents on loopback)
	RouteBlocked                   // /metadata/instance* with --block-instance-metadata
)

// String names the route for metric labels (a bounded set, unlike raw paths).
func (r Route) String() string {
	switch r {
	case RouteToken:
		return "token"
	case RouteInvalidToken:
		return "invalid_token_path"
	case RouteHostToken:
		return "host_token"
	case RouteBlocked:
		return "blocked"
	}
	return "proxy"
}

const (
	tokenPathRest  = "/identity/oauth2/token"
	instancePrefix = "/instance"
	hostTokenPath  = "/host/token"
)

// ObfuscatedToken matches anything that looks like the token path with junk between its words
// (backslashes, extra segments, encodings): upstream answers such paths with 400 so that they are
// never proxied to the real IMDS, which would hand out the node's identities.
//
// Unlike upstream, the whole pattern is case-insensitive: upstream proxied
// /metadata/Identity/oauth2/token to IMDS, and an IMDS that matches paths case-insensitively would
// answer it with the node's identities, bypassing every binding check.
var ObfuscatedToken = regexp.MustCompile(`(?i)metadata(.*?)identity(.*?)oauth2(.*?)token`)

// Classify maps a request path to a route in upstream's order: token, obfuscated token, host
// token, blocked instance metadata, proxy. rawPath is the escaped form, checked as well so that
// percent-encoded separators cannot smuggle a token path past the checks.
func Classify(p, rawPath string, blockInstance bool) Route {
	if rest, ok := cutMetadataPrefix(p); ok {
		// The word "metadata" is case-insensitive, the rest case-sensitive, and the match is a
		// prefix match, as upstream's router does it.
		if strings.HasPrefix(rest, tokenPathRest) && path.Clean(p) == strings.TrimSuffix(p, "/") && rawPath == "" {
			return RouteToken
		}
	}
	if ObfuscatedToken.MatchString(p) || (rawPath != "" && ObfuscatedToken.MatchString(rawPath)) {
		return RouteInvalidToken
	}
	if strings.HasPrefix(p, hostTokenPath) {
		return RouteHostToken
	}
	if blockInstance {
		// Clean first so that "/metadata//instance" or "/x/../metadata/instance" cannot slip past.
		if rest, ok := cutMetadataPrefix(path.Clean(p)); ok && strings.HasPrefix(rest, instancePrefix) {
			return RouteBlocked
		}
	}
	return RouteProxy
}

// cutMetadataPrefix reports whether p starts with "/metadata" (any case) and returns the rest.
func cutMetadataPrefix(p string) (string, bool) {
	const n = len("/metadata")
	if len(p) < n || !strings.EqualFold(p[:n], "/metadata") {
		return "", false
	}
	return p[n:], true
}

// Limits on caller input: far above anything an SDK sends, low enough that parsing is cheap.
const (
	// MaxQueryLen bounds the whole query string; MaxParamLen one value.
	MaxQueryLen = 4096
	MaxParamLen = 1024
)

// ErrBadRequest is wrapped by every request-parsing error; such errors become 400 answers.
var ErrBadRequest = errors.New("bad request")

// TokenQuery is a parsed token request.
type TokenQuery struct {
	Resource string
	// ClientID, ResourceID (msi_res_id or mi_res_id) and ObjectID select one of the pod's
	// identities; empty when not given.
	ClientID   string
	ResourceID string
	ObjectID   string
}

// HasSelector reports whether the caller named an identity.
func (q *TokenQuery) HasSelector() bool {
	return q.ClientID != "" || q.ResourceID != "" || q.ObjectID != ""
}

// ParseTokenQuery parses the query string of a token request. It refuses what IMDS would refuse
// and what would make the request ambiguous: malformed encoding, oversized input, a parameter
// given twice with different values, two resource-ID spellings that disagree, and a missing
// resource.
func ParseTokenQuery(raw string) (TokenQuery, error) {
	var q TokenQuery
	if len(raw) > MaxQueryLen {
		return q, fmt.Errorf("%w: query string is %d bytes, more than the %d allowed; send only resource, api-version and one identity selector", ErrBadRequest, len(raw), MaxQueryLen)
	}
	var miRes, msiRes string
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		key, err := url.QueryUnescape(k)
		if err != nil {
			return q, fmt.Errorf("%w: query parameter name %q is not valid URL encoding: %v", ErrBadRequest, Clip(k), err)
		}
		var dst *string
		switch key {
		case "resource":
			dst = &q.Resource
		case "client_id":
			dst = &q.ClientID
		case "mi_res_id":
			dst = &miRes
		case "msi_res_id":
			dst = &msiRes
		case "object_id":
			dst = &q.ObjectID
		default:
			continue // api-version and anything else are not ours to judge
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			return q, fmt.Errorf("%w: value of query parameter %s is not valid URL encoding: %v", ErrBadRequest, key, err)
		}
		if len(val) > MaxParamLen {
			return q, fmt.Errorf("%w: query parameter %s is %d bytes, more than the %d allowed", ErrBadRequest, key, len(val), MaxParamLen)
		}
		if val == "" {
			return q, fmt.Errorf("%w: query parameter %s is empty; give it a value or leave it out", ErrBadRequest, key)
		}
		if *dst != "" && *dst != val {
			return q, fmt.Errorf("%w: query parameter %s is given more than once with different values; give it once", ErrBadRequest, key)
		}
		*dst = val
	}
	switch {
	case miRes != "" && msiRes != "" && !strings.EqualFold(miRes, msiRes):
		return q, fmt.Errorf("%w: mi_res_id and msi_res_id name different identities; give only one of them", ErrBadRequest)
	case msiRes != "":
		q.ResourceID = msiRes
	default:
		q.ResourceID = miRes
	}
	if q.Resource == "" {
		return q, fmt.Errorf("%w: parameter resource cannot be empty; add resource=<audience URI> to the query", ErrBadRequest)
	}
	return q, nil
}

// Clip shortens caller input quoted in error messages.
func Clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
