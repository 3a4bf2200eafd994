package nmi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// staticCredKey identifies an identity's credentials without I/O (for type 0 it is the whole key).
func (s *Server) staticCredKey(id *aadv1.AzureIdentity) string {
	if id.Spec.Type == aadv1.UserAssignedMSI {
		// Both IDs: IMDS is asked by resource ID and the token checked against the client ID.
		return "msi|" + strings.ToLower(id.Spec.ResourceID) + "|" + strings.ToLower(id.Spec.ClientID)
	}
	sec := id.Spec.ClientPassword
	return fmt.Sprintf("sp%d|%s/%s|%s|%s|%s|%s|%s/%s", id.Spec.Type, id.Namespace, id.Name, strings.ToLower(id.Spec.ClientID),
		id.Spec.TenantID, strings.Join(id.Spec.AuxiliaryTenantIDs, ","), s.sp.authority(id), sec.Namespace, sec.Name)
}

// credentials returns the cache key part and the source for an identity.
func (s *Server) credentials(ctx context.Context, id *aadv1.AzureIdentity) (string, TokenSource, error) {
	if err := s.checkPolicy(id); err != nil {
		return "", nil, err
	}
	switch id.Spec.Type {
	case aadv1.UserAssignedMSI:
		return s.staticCredKey(id), s.imds, nil
	case aadv1.ServicePrincipal, aadv1.ServicePrincipalCertificate:
		if s.sp.Secrets == nil {
			return "", nil, fmt.Errorf("%w: AzureIdentity %s/%s is a service principal but this NMI has no Secret access configured", ErrCredential, id.Namespace, id.Name)
		}
		v, err := s.sp.credentialVersion(ctx, id)
		if err != nil {
			return "", nil, err
		}
		return s.staticCredKey(id) + "|" + v, s.sp, nil
	}
	return "", nil, fmt.Errorf("%w: AzureIdentity %s/%s has unsupported type %d: use 0 (user-assigned identity), 1 (service principal with secret) or 2 (service principal with certificate)", ErrCredential, id.Namespace, id.Name, id.Spec.Type)
}

// fetch answers from the cache or, within the pod's rate budget, from Azure, retrying IMDS's
// "Identity not found" (propagation after assignment) until deadline.
func (s *Server) fetch(ctx context.Context, pod *podInfo, id *aadv1.AzureIdentity, resource string, deadline time.Time) (*cacheEntry, error) {
	credKey, src, err := s.credentials(ctx, id)
	if err != nil {
		return nil, err
	}
	key := cacheKey(credKey, resource)
	if e := s.cache.Lookup(key); e != nil {
		return e, nil
	}
	if err := s.limits.allow(pod); err != nil {
		s.metrics.rateLimited.Inc()
		return nil, err
	}
	// Remembered by identity, not credential version: a rotated Secret keeps its resources.
	s.remember(s.staticCredKey(id), resource)
	op := "token_msi_userassignedid"
	if id.Spec.Type != aadv1.UserAssignedMSI {
		op = "token_aad"
	}
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		e, err := s.cache.Fetch(ctx, key, s.fetchFunc(src, id, resource))
		s.metrics.imdsDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
		if err == nil {
			return e, nil
		}
		s.metrics.imdsErrors.WithLabelValues(op).Inc()
		wait := min(backoff, time.Until(deadline))
		if !errors.Is(err, ErrIdentityNotFound) || wait <= 0 {
			return nil, err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (the client gave up: %v)", err, ctx.Err())
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// remember records that a resource was asked for with some credentials, so later assignments of
// the same identity prefetch it. Bounded per identity.
func (s *Server) remember(credKey, resource string) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	m := s.seen[credKey]
	if m == nil {
		if len(s.seen) >= 4096 {
			return
		}
		m = map[string]struct{}{}
		s.seen[credKey] = m
	}
	if len(m) < 16 {
		m[resource] = struct{}{}
	}
}

// prefetch fetches tokens for a newly Assigned identity in the background (kiam-style), so the
// pod's first request is a hit. Managed identities retry while IMDS does not know the identity
// yet; service principals read their Secret (starting its watch) and ask Azure AD once.
func (s *Server) prefetch(a *aaiInfo) {
	id := a.Identity
	if id.Spec.Type != aadv1.UserAssignedMSI && s.sp.Secrets == nil {
		return
	}
	resources := map[string]struct{}{}
	for _, r := range s.cfg.PrefetchResources {
		resources[r] = struct{}{}
	}
	s.seenMu.Lock()
	for r := range s.seen[s.staticCredKey(id)] {
		resources[r] = struct{}{}
	}
	s.seenMu.Unlock()
	for r := range resources {
		go func() {
			s.prefetchSem <- struct{}{}
			defer func() { <-s.prefetchSem }()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PrefetchBudget)
			defer cancel()
			err := s.prefetchOne(ctx, id, r)
			result := "ok"
			if err != nil {
				result = "error"
				s.log.V(1).Info("prefetch failed; the first request will fetch", "identity", id.Namespace+"/"+id.Name, "error", err.Error())
			}
			s.metrics.prefetches.WithLabelValues(result).Inc()
		}()
	}
}

func (s *Server) prefetchOne(ctx context.Context, id *aadv1.AzureIdentity, resource string) error {
	credKey, src, err := s.credentials(ctx, id)
	if err != nil {
		return err
	}
	key := cacheKey(credKey, resource)
	backoff := 200 * time.Millisecond
	for {
		if s.cache.Lookup(key) != nil {
			return nil
		}
		_, err := s.cache.Fetch(ctx, key, s.fetchFunc(src, id, resource))
		if err == nil || !errors.Is(err, ErrIdentityNotFound) {
			return err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return err
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// podLimiter is a token bucket per pod for requests that reach Azure.
type podLimiter struct {
	r     rate.Limit
	burst int
	mu    sync.Mutex
	m     map[types.UID]*rate.Limiter
}

func newPodLimiter(perSecond float64, burst int) *podLimiter {
	return &podLimiter{r: rate.Limit(perSecond), burst: burst, m: map[types.UID]*rate.Limiter{}}
}

func (l *podLimiter) allow(p *podInfo) error {
	if l.r <= 0 {
		return nil
	}
	l.mu.Lock()
	lim := l.m[p.UID]
	if lim == nil {
		lim = rate.NewLimiter(l.r, l.burst)
		l.m[p.UID] = lim
	}
	l.mu.Unlock()
	now := time.Now()
	res := lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return &rateLimitError{pod: p.key(), wait: d}
	}
	return nil
}

func (l *podLimiter) forget(uid types.UID) {
	l.mu.Lock()
	delete(l.m, uid)
	l.mu.Unlock()
}

// fetchFunc fetches tokens for one identity and resource. The object ID a token reveals is
// remembered under the identity's static key, which is where object_id selectors look it up
// (the full credentials key of a service principal also holds its Secret's version).
func (s *Server) fetchFunc(src TokenSource, id *aadv1.AzureIdentity, resource string) fetchFunc {
	static := s.staticCredKey(id)
	return func(ctx context.Context) ([]Token, error) {
		toks, err := src.Fetch(ctx, id, resource)
		if err == nil && len(toks) > 0 && toks[0].ObjectID != "" {
			s.cache.learnObjectID(static, toks[0].ObjectID)
		}
		return toks, err
	}
}
