package nmi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// fedSubject is whose ServiceAccount token NMI presents to Azure AD: the ServiceAccount and the
// pod the token is bound to (the calling pod, or NMI's own pod for broker identities).
type fedSubject struct {
	sa     types.NamespacedName
	pod    string
	podUID types.UID
}

// subjectString is the sub claim of the subject's tokens, which a federated credential names.
func (f fedSubject) subjectString() string {
	return "system:serviceaccount:" + f.sa.Namespace + ":" + f.sa.Name
}

// saTokenKey is one cached ServiceAccount token: tokens are bound to one pod, for one audience.
type saTokenKey struct {
	pod      types.UID
	audience string
}

type saToken struct {
	token    string
	issuer   string // iss claim, read without verifying: only for messages
	reuseTil time.Time
}

// saTokens mints pod-bound ServiceAccount tokens with the TokenRequest API and reuses each until
// 80% of its life, as the kubelet does. It is the only owner of minted tokens.
type saTokens struct {
	kc kubernetes.Interface

	mu    sync.Mutex
	m     map[saTokenKey]saToken
	mints flights[saTokenKey, saToken]
}

func newSATokens(kc kubernetes.Interface) *saTokens {
	return &saTokens{kc: kc, m: map[saTokenKey]saToken{}}
}

// get returns a token of subj for audience, minting one when none is cached or it is past 80% of
// its life.
func (t *saTokens) get(ctx context.Context, subj fedSubject, audience string, seconds int64) (saToken, error) {
	k := saTokenKey{pod: subj.podUID, audience: audience}
	t.mu.Lock()
	tok, ok := t.m[k]
	t.mu.Unlock()
	if ok && time.Now().Before(tok.reuseTil) {
		return tok, nil
	}
	return t.mints.do(ctx, k, func() (saToken, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tok, err := t.mint(ctx, subj, audience, seconds)
		if err != nil {
			return saToken{}, err
		}
		t.mu.Lock()
		t.m[k] = tok
		t.mu.Unlock()
		return tok, nil
	})
}

func (t *saTokens) mint(ctx context.Context, subj fedSubject, audience string, seconds int64) (saToken, error) {
	if t.kc == nil {
		return saToken{}, fmt.Errorf("%w: this NMI has no Kubernetes client for the TokenRequest API, so it cannot serve federated identities", ErrCredential)
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{audience},
		ExpirationSeconds: &seconds,
		// Bound to the pod: the apiserver refuses a pod of another ServiceAccount or UID, and
		// the token dies with the pod for the apiserver itself.
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: subj.pod, UID: subj.podUID},
	}}
	start := time.Now()
	out, err := t.kc.CoreV1().ServiceAccounts(subj.sa.Namespace).CreateToken(ctx, subj.sa.Name, tr, metav1.CreateOptions{})
	if err != nil {
		return saToken{}, &TokenRequestError{Subject: subj, Audience: audience, Err: err}
	}
	exp := out.Status.ExpirationTimestamp.Time
	if exp.IsZero() || !exp.After(start) {
		exp = start.Add(time.Duration(seconds) * time.Second)
	}
	return saToken{token: out.Status.Token, issuer: issuerOf(out.Status.Token),
		reuseTil: start.Add(exp.Sub(start) * 8 / 10)}, nil
}

// forgetPod drops the tokens bound to a pod that left the node.
func (t *saTokens) forgetPod(uid types.UID) {
	t.mu.Lock()
	for k := range t.m {
		if k.pod == uid {
			delete(t.m, k)
		}
	}
	t.mu.Unlock()
}

// count is the number of cached tokens of a pod (for tests and metrics).
func (t *saTokens) count(uid types.UID) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for k := range t.m {
		if k.pod == uid {
			n++
		}
	}
	return n
}

// issuerOf reads a JWT's iss claim without verifying it.
func issuerOf(jwt string) string {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		Iss string `json:"iss"`
	}
	_ = json.Unmarshal(b, &c)
	return c.Iss
}

// TokenRequestError: the apiserver refused to mint a ServiceAccount token for a federated
// identity.
type TokenRequestError struct {
	Subject  fedSubject
	Audience string
	Err      error
}

func (e *TokenRequestError) Error() string {
	sa := e.Subject.sa.Namespace + "/" + e.Subject.sa.Name
	var what string
	switch {
	case apierrors.IsForbidden(e.Err):
		what = "NMI's ServiceAccount needs create on serviceaccounts/token (the chart's ClusterRole grants it), and an admission policy may refuse TokenRequests that are not bound to a pod or not for the federation audience"
	case apierrors.IsNotFound(e.Err):
		what = "the ServiceAccount or the pod does not exist (any more): create the ServiceAccount, or retry once the pod is running"
	case apierrors.IsConflict(e.Err):
		what = "the pod was replaced (its UID changed): retry"
	default:
		what = "check that the API server is reachable"
	}
	return fmt.Sprintf("TokenRequest for ServiceAccount %s (audience %s, bound to pod %s/%s) failed: %s; %s",
		sa, e.Audience, e.Subject.sa.Namespace, e.Subject.pod, firstLine(e.Err.Error()), what)
}

func (e *TokenRequestError) Unwrap() error { return e.Err }

// status is the answer a pod gets for this failure: 403 when NMI may not mint the token or the
// ServiceAccount is missing (retrying does not help), 503 otherwise.
func (e *TokenRequestError) status() int {
	var st apierrors.APIStatus
	if errors.As(e.Err, &st) {
		switch st.Status().Code {
		case http.StatusForbidden, http.StatusNotFound:
			return http.StatusForbidden
		}
	}
	return http.StatusServiceUnavailable
}
