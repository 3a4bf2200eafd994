package nmi

import "github.com/podidentity/podidentity/internal/nmi/imdsreq"

// Request parsing lives in imdsreq (pure, fuzzed on its own); these names keep this package terse.
type (
	TokenQuery = imdsreq.TokenQuery
)

const (
	routeToken        = imdsreq.RouteToken
	routeInvalidToken = imdsreq.RouteInvalidToken
	routeHostToken    = imdsreq.RouteHostToken
	routeBlocked      = imdsreq.RouteBlocked
)

var (
	// ErrBadRequest is wrapped by every request-parsing error; such errors become 400 answers.
	ErrBadRequest   = imdsreq.ErrBadRequest
	ParseTokenQuery = imdsreq.ParseTokenQuery
	classify        = imdsreq.Classify
	clip            = imdsreq.Clip
)
