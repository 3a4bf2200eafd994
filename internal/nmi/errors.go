package nmi

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/podidentity/podidentity/internal/nmi/imdsreq"
)

// Errors a token request can end in. Each maps to one status code (see statusOf and the table in
// docs/nmi.md); messages name what was wrong and what to do.
var (
	// ErrNotBound: the pod is not bound to any identity, or not to the one it asked for.
	ErrNotBound = errors.New("not bound")
	// ErrNotAssigned: the pod is bound, but MIC has not (yet) assigned the identity to this node.
	ErrNotAssigned = errors.New("identity not assigned yet")
	// ErrIdentityNotFound: IMDS does not (yet) know the identity; right after an assignment this
	// is propagation delay.
	ErrIdentityNotFound = errors.New("identity not found by IMDS")
	// ErrRateLimited: the pod exceeded its token-request budget.
	ErrRateLimited = errors.New("rate limited")
	// ErrNoMetadataHeader: the Metadata: true header is missing.
	//lint:ignore ST1005 IMDS's own wording, which clients match on.
	ErrNoMetadataHeader = errors.New("Required metadata header not specified")
	// ErrCredential: an identity's credentials are unusable as configured (bad Secret content,
	// unsupported type); retrying does not help.
	ErrCredential = errors.New("identity credentials unusable")
	// ErrUnavailable: a dependency (IMDS, Azure AD, the API server) failed in a way that may heal.
	ErrUnavailable = errors.New("temporarily unavailable")
)

// PodNotFoundError: no pod on this node has the caller's IP.
type PodNotFoundError struct{ IP, Node string }

func (e *PodNotFoundError) Error() string {
	return fmt.Sprintf("no pod on node %q has IP %s: only pods of this node may ask for tokens; if the pod has just started, retry", e.Node, e.IP)
}

// AmbiguousPodError: two live pods on this node report the same IP (an IP being reused while the
// old pod's end is not yet visible); answering could hand one pod the other's identities.
type AmbiguousPodError struct{ IP string }

func (e *AmbiguousPodError) Error() string {
	return fmt.Sprintf("more than one live pod on this node reports IP %s (IP reuse in progress): retry in a moment", e.IP)
}

// UpstreamError is an error answer from IMDS or Azure AD.
type UpstreamError struct {
	Service     string // "imds" or "aad"
	Status      int
	Code        string
	Description string
	RetryAfter  time.Duration
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("%s answered %d %s: %s", e.Service, e.Status, e.Code, e.Description)
}

// apiError is what the HTTP layer writes: status, IMDS-style error code and description.
type apiError struct {
	status     int
	code       string
	desc       string
	retryAfter time.Duration
}

// statusOf maps an error to the answer a client sees. Codes follow what the Azure SDKs do with
// them: 404, 429 and 5xx are retried by azidentity (so "not yet" answers use them); 400 and 403
// fail fast (so "never" answers use them).
func statusOf(err error, retryAfterMode bool, retryAfter time.Duration) apiError {
	msg := err.Error()
	var pnf *PodNotFoundError
	var amb *AmbiguousPodError
	var up *UpstreamError
	var tre *TokenRequestError
	switch {
	case errors.Is(err, ErrViewNotCurrent):
		return apiError{http.StatusServiceUnavailable, "view_not_current", msg, time.Second}
	case errors.Is(err, imdsreq.ErrBadRequest), errors.Is(err, ErrNoMetadataHeader):
		return apiError{http.StatusBadRequest, "invalid_request", msg, 0}
	case errors.As(err, &pnf):
		return apiError{http.StatusNotFound, "pod_not_found", msg, 0}
	case errors.As(err, &amb):
		return apiError{http.StatusServiceUnavailable, "pod_ambiguous", msg, time.Second}
	case errors.Is(err, ErrNotBound):
		return apiError{http.StatusForbidden, "identity_not_bound", msg, 0}
	case errors.Is(err, ErrNotAssigned), errors.Is(err, ErrIdentityNotFound):
		if retryAfterMode {
			return apiError{http.StatusServiceUnavailable, "identity_not_ready", msg, retryAfter}
		}
		return apiError{http.StatusNotFound, "identity_not_ready", msg, 0}
	case errors.Is(err, ErrRateLimited):
		ra := time.Second
		var rl *rateLimitError
		if errors.As(err, &rl) && rl.wait > ra {
			ra = rl.wait
		}
		return apiError{http.StatusTooManyRequests, "too_many_requests", msg, ra}
	case errors.Is(err, ErrCredential):
		return apiError{http.StatusForbidden, "invalid_identity", msg, 0}
	case errors.Is(err, ErrRefused):
		return apiError{http.StatusForbidden, "identity_refused", msg, 0}
	case errors.Is(err, ErrIdentityMismatch):
		return apiError{http.StatusForbidden, "identity_mismatch", msg, 0}
	case errors.Is(err, ErrFederationPropagating):
		return apiError{http.StatusServiceUnavailable, "federated_credential_propagating", msg, max(retryAfter, time.Second)}
	case errors.Is(err, ErrNoFederatedCredential):
		return apiError{http.StatusForbidden, "federated_credential_missing", msg, 0}
	case errors.As(err, &tre):
		if st := tre.status(); st == http.StatusForbidden {
			return apiError{st, "service_account_token_refused", msg, 0}
		}
		return apiError{http.StatusServiceUnavailable, "service_account_token_unavailable", msg, time.Second}
	case errors.As(err, &up):
		switch {
		case up.Status == http.StatusTooManyRequests:
			return apiError{up.Status, up.Code, msg, max(up.RetryAfter, time.Second)}
		case up.Status >= 500 || up.Status == 0:
			return apiError{http.StatusServiceUnavailable, "upstream_unavailable", msg, 0}
		case up.Service == "aad":
			// Azure AD refused the credentials: retrying the same ones does not help.
			return apiError{http.StatusForbidden, up.Code, msg, 0}
		default:
			return apiError{up.Status, up.Code, msg, 0}
		}
	}
	return apiError{http.StatusServiceUnavailable, "unavailable", msg, 0}
}

type rateLimitError struct {
	pod  string
	wait time.Duration
}

func (e *rateLimitError) Error() string {
	return fmt.Sprintf("pod %s sends token requests faster than this node allows: retry after %s", e.pod, e.wait.Round(time.Millisecond))
}

func (e *rateLimitError) Unwrap() error { return ErrRateLimited }
