package nmi

import (
	"context"
	"errors"
	"fmt"
	"time"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

// credentials returns the cache key and the source for an identity as pod uses it (pod matters
// for federated identities only: their tokens are for the pod's ServiceAccount).
func (s *Server) credentials(ctx context.Context, pod *podInfo, id *aadv1.AzureIdentity) (credKey, TokenSource, error) {
	if err := s.checkPolicy(id); err != nil {
		return credKey{}, nil, err
	}
	key := s.staticCredKey(id)
	if id.Spec.IsFederated() {
		subj, err := s.subjectFor(pod, id)
		if err != nil {
			return credKey{}, nil, err
		}
		key.subject = subj.sa
		return key, &subjectSource{src: s.fed, subj: subj}, nil
	}
	switch id.Spec.Type {
	case aadv1.UserAssignedMSI:
		return key, s.imds, nil
	case aadv1.ServicePrincipal, aadv1.ServicePrincipalCertificate:
		if s.sp.Secrets == nil {
			return credKey{}, nil, fmt.Errorf("%w: AzureIdentity %s/%s is a service principal but this NMI has no Secret access configured", ErrCredential, id.Namespace, id.Name)
		}
		v, err := s.sp.credentialVersion(ctx, id)
		if err != nil {
			return credKey{}, nil, err
		}
		key.secretVersion = v
		return key, s.sp, nil
	}
	return credKey{}, nil, fmt.Errorf("%w: AzureIdentity %s/%s has unsupported type %d: use 0 (user-assigned identity), 1 (service principal with secret) or 2 (service principal with certificate)", ErrCredential, id.Namespace, id.Name, id.Spec.Type)
}

// fetch answers from the cache or, within the pod's rate budget, from Azure, retrying IMDS's
// "Identity not found" (propagation after assignment) until deadline.
func (s *Server) fetch(ctx context.Context, pod *podInfo, id *aadv1.AzureIdentity, resource string, deadline time.Time) (*cacheEntry, error) {
	cred, src, err := s.credentials(ctx, pod, id)
	if err != nil {
		return nil, err
	}
	key := cacheKey{cred: cred, resource: resource}
	if e := s.cache.Lookup(key); e != nil {
		return e, nil
	}
	if err := s.limits.allow(pod); err != nil {
		s.metrics.rateLimited.Inc()
		return nil, err
	}
	// Remembered by identity, not credential version: a rotated Secret keeps its resources.
	s.remember(s.staticCredKey(id), resource)
	return s.fetchRetry(ctx, key, src, id, deadline)
}

// fetchRetry fetches key through the cache (one fetch per key at a time), retrying IMDS's
// "Identity not found" until deadline; every other error ends it. Requests and prefetches both
// come here.
func (s *Server) fetchRetry(ctx context.Context, key cacheKey, src TokenSource, id *aadv1.AzureIdentity, deadline time.Time) (*cacheEntry, error) {
	op := "token_msi_userassignedid"
	switch {
	case id.Spec.IsFederated():
		op = "token_federated"
	case id.Spec.Type != aadv1.UserAssignedMSI:
		op = "token_aad"
	}
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		e, err := s.cache.Fetch(ctx, key, s.fetchFunc(src, id, key.resource))
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
		// A prefetch may have filled the entry while this one waited.
		if e := s.cache.Lookup(key); e != nil {
			return e, nil
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// remember records that a resource was asked for with an identity, so later assignments (and
// pods) of the same identity prefetch it. Bounded per identity.
func (s *Server) remember(key credKey, resource string) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	m := s.seen[key]
	if m == nil {
		if len(s.seen) >= 4096 {
			return
		}
		m = map[string]struct{}{}
		s.seen[key] = m
	}
	if len(m) < 16 {
		m[resource] = struct{}{}
	}
}

// prefetchResources are the configured resources plus those pods asked for with id.
func (s *Server) prefetchResources(id *aadv1.AzureIdentity) []string {
	set := map[string]struct{}{}
	for _, r := range s.cfg.PrefetchResources {
		set[r] = struct{}{}
	}
	s.seenMu.Lock()
	for r := range s.seen[s.staticCredKey(id)] {
		set[r] = struct{}{}
	}
	s.seenMu.Unlock()
	out := make([]string, 0, len(set))
	for r := range set {
		out = append(out, r)
	}
	return out
}

// prefetch fetches tokens for a newly Assigned identity in the background (kiam-style), so the
// pod's first request is a hit. Managed identities retry while IMDS does not know the identity
// yet; service principals read their Secret (starting its watch) and ask Azure AD once.
// Federated identities are prefetched when their pod starts running (prefetchPod), not here.
func (s *Server) prefetch(a *aaiInfo) {
	id := a.Identity
	if id.Spec.IsFederated() || (id.Spec.Type != aadv1.UserAssignedMSI && s.sp.Secrets == nil) {
		return
	}
	for _, r := range s.prefetchResources(id) {
		s.prefetchAsync(nil, id, r)
	}
}

// prefetchAsync runs prefetchOne in the background, at most two at a time.
func (s *Server) prefetchAsync(pod *podInfo, id *aadv1.AzureIdentity, resource string) {
	go func() {
		s.prefetchSem <- struct{}{}
		defer func() { <-s.prefetchSem }()
		// While a watch catches up the assignment or pod may be stale: the first request
		// fetches instead (and is confirmed before it is served).
		if !s.store.view.snapshot().current {
			s.metrics.prefetches.WithLabelValues("skipped_view_not_current").Inc()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PrefetchBudget)
		defer cancel()
		err := s.prefetchOne(ctx, pod, id, resource)
		result := "ok"
		if err != nil {
			result = "error"
			s.log.V(1).Info("prefetch failed; the first request will fetch", "identity", id.Namespace+"/"+id.Name, "error", err.Error())
		}
		s.metrics.prefetches.WithLabelValues(result).Inc()
	}()
}

// prefetchOne fills the cache for one identity and resource with fetch's retry loop, bounded by
// ctx (--prefetch budget) instead of a request's.
func (s *Server) prefetchOne(ctx context.Context, pod *podInfo, id *aadv1.AzureIdentity, resource string) error {
	cred, src, err := s.credentials(ctx, pod, id)
	if err != nil {
		return err
	}
	key := cacheKey{cred: cred, resource: resource}
	if s.cache.Lookup(key) != nil {
		return nil
	}
	deadline, _ := ctx.Deadline()
	_, err = s.fetchRetry(ctx, key, src, id, deadline)
	return err
}

// fetchFunc fetches tokens for one identity and resource. The object ID a token reveals is
// remembered under the identity's static key, which is where object_id selectors look it up
// (the full credentials key also holds a Secret's version or a federated subject).
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
