package nmi

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
)

// CacheOptions tune the token cache.
type CacheOptions struct {
	// MaxEntries caps the number of (identity, resource) entries; the least recently used goes.
	MaxEntries int
	// MinValidity: a cached token with less life left is not served (clients would get a token
	// that expires before they use it).
	MinValidity time.Duration
	// IdleTTL: entries unused this long are not refreshed and are dropped once due for refresh.
	IdleTTL time.Duration
	// SweepInterval is how often the background loop refreshes and evicts.
	SweepInterval time.Duration
	// FetchTimeout bounds one fetch from Azure.
	FetchTimeout time.Duration
}

func (o *CacheOptions) defaults() {
	if o.MaxEntries <= 0 {
		o.MaxEntries = 10000
	}
	if o.MinValidity <= 0 {
		o.MinValidity = 5 * time.Minute
	}
	if o.IdleTTL <= 0 {
		o.IdleTTL = time.Hour
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = 30 * time.Second
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 30 * time.Second
	}
}

// fetchFunc gets fresh tokens for one cache key.
type fetchFunc func(ctx context.Context) ([]Token, error)

// cacheEntry is one cached answer. Bodies are pre-rendered around the one number that changes
// per request (expires_in), so a hit costs a map lookup and a few appends.
type cacheEntry struct {
	tokens    []Token
	pre, post [][]byte
	expiresOn time.Time
	refreshAt time.Time
	lastUsed  atomic.Int64
	fetch     fetchFunc
	// refreshing is set while a background refresh of this entry runs: every hit past refreshAt
	// would otherwise start one more goroutine.
	refreshing atomic.Bool
}

// TokenCache caches tokens per (identity credentials, resource). It never decides who may have
// a token: callers authorize each request from current state first, and the key includes every
// field that selects the credentials (so an edited identity or rotated Secret is a new key).
type TokenCache struct {
	opts    CacheOptions
	log     logr.Logger
	metrics *Metrics

	mu sync.RWMutex
	m  map[cacheKey]*cacheEntry
	// fills runs one fetch per key, whether for a miss or a background refresh.
	fills flights[cacheKey, *cacheEntry]

	oidMu sync.RWMutex
	oids  map[credKey]string // static credentials key -> principal object ID, learned from tokens
}

// NewTokenCache returns an empty cache.
func NewTokenCache(opts CacheOptions, m *Metrics, log logr.Logger) *TokenCache {
	opts.defaults()
	return &TokenCache{opts: opts, log: log, metrics: m, m: map[cacheKey]*cacheEntry{}, oids: map[credKey]string{}}
}

// Lookup returns a servable entry or nil. A hit past its refresh point starts a background
// refresh, so pods that keep using a token never wait for one.
func (c *TokenCache) Lookup(key cacheKey) *cacheEntry {
	c.mu.RLock()
	e := c.m[key]
	c.mu.RUnlock()
	if e == nil {
		return nil
	}
	now := time.Now()
	if now.Add(c.opts.MinValidity).After(e.expiresOn) {
		return nil
	}
	e.lastUsed.Store(now.UnixNano())
	if now.After(e.refreshAt) {
		c.refreshAsync(key, e)
	}
	c.metrics.cacheHits.Inc()
	return e
}

// Fetch gets tokens for key, one fetch per key at a time however many requests miss together.
// The fetch runs detached from ctx so that a client giving up does not fail the others waiting.
func (c *TokenCache) Fetch(ctx context.Context, key cacheKey, fetch fetchFunc) (*cacheEntry, error) {
	c.metrics.cacheMisses.Inc()
	return c.fills.do(ctx, key, func() (*cacheEntry, error) { return c.fill(key, fetch) })
}

func (c *TokenCache) fill(key cacheKey, fetch fetchFunc) (*cacheEntry, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.FetchTimeout)
	defer cancel()
	toks, err := fetch(ctx)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return nil, errors.New("token source returned no token")
	}
	e := newEntry(toks, fetch)
	e.lastUsed.Store(time.Now().UnixNano())
	c.mu.Lock()
	if _, ok := c.m[key]; !ok && len(c.m) >= c.opts.MaxEntries {
		c.evictLRULocked()
	}
	c.m[key] = e
	n := len(c.m)
	c.mu.Unlock()
	c.metrics.cacheEntries.Set(float64(n))
	return e, nil
}

// refreshAsync refreshes one entry in the background, starting nothing while a refresh of the
// entry (or a fetch of its key) runs. On success the entry is replaced; on failure the flag is
// cleared so that a later hit tries again.
func (c *TokenCache) refreshAsync(key cacheKey, e *cacheEntry) {
	if !e.refreshing.CompareAndSwap(false, true) {
		return
	}
	f, started := c.fills.start(key, func() (*cacheEntry, error) { return c.fill(key, e.fetch) })
	if !started {
		e.refreshing.Store(false)
		return
	}
	go func() {
		defer e.refreshing.Store(false)
		<-f.done
		if err := f.err; err != nil {
			c.metrics.cacheRefreshes.WithLabelValues("error").Inc()
			c.log.V(1).Info("refreshing cached token failed; the cached one is served until it is too close to expiry", "error", err.Error())
			return
		}
		c.metrics.cacheRefreshes.WithLabelValues("ok").Inc()
	}()
}

func (c *TokenCache) evictLRULocked() {
	var oldest cacheKey
	var at int64
	found := false
	for k, e := range c.m {
		if u := e.lastUsed.Load(); !found || u < at {
			oldest, at, found = k, u, true
		}
	}
	delete(c.m, oldest)
}

// forget drops every entry whose key drop selects (e.g. the tokens of a ServiceAccount whose last
// pod left the node) and returns how many went.
func (c *TokenCache) forget(drop func(cacheKey) bool) int {
	c.mu.Lock()
	n := 0
	for k := range c.m {
		if drop(k) {
			delete(c.m, k)
			n++
		}
	}
	left := len(c.m)
	c.mu.Unlock()
	c.metrics.cacheEntries.Set(float64(left))
	return n
}

// Run refreshes entries that are still in use ahead of expiry and drops idle ones, until ctx ends.
func (c *TokenCache) Run(ctx context.Context) {
	t := time.NewTicker(c.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.sweep(time.Now())
		}
	}
}

func (c *TokenCache) sweep(now time.Time) {
	c.mu.Lock()
	var due []cacheKey
	var entries []*cacheEntry
	for k, e := range c.m {
		idle := now.Sub(time.Unix(0, e.lastUsed.Load())) > c.opts.IdleTTL
		switch {
		case idle && (now.After(e.refreshAt) || now.After(e.expiresOn)):
			delete(c.m, k)
		case !idle && now.After(e.refreshAt):
			due = append(due, k)
			entries = append(entries, e)
		}
	}
	n := len(c.m)
	c.mu.Unlock()
	c.metrics.cacheEntries.Set(float64(n))
	for i, k := range due {
		c.refreshAsync(k, entries[i])
	}
}

// learnObjectID records the principal object ID a token revealed for an identity's static
// credentials key. Bounded: past the cap, new keys are not learned (object_id then fails fast).
func (c *TokenCache) learnObjectID(key credKey, oid string) {
	c.oidMu.Lock()
	if _, ok := c.oids[key]; ok || len(c.oids) < c.opts.MaxEntries {
		c.oids[key] = oid
	}
	c.oidMu.Unlock()
}

// objectID returns the principal object ID learned for a credentials key, if any.
func (c *TokenCache) objectID(key credKey) string {
	c.oidMu.RLock()
	defer c.oidMu.RUnlock()
	return c.oids[key]
}

// Len is the number of entries.
func (c *TokenCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

func newEntry(toks []Token, fetch fetchFunc) *cacheEntry {
	e := &cacheEntry{tokens: toks, fetch: fetch, expiresOn: toks[0].ExpiresOn}
	now := time.Now()
	for _, t := range toks {
		if t.ExpiresOn.Before(e.expiresOn) {
			e.expiresOn = t.ExpiresOn
		}
		pre, post := renderToken(t)
		e.pre = append(e.pre, pre)
		e.post = append(e.post, post)
	}
	// Refresh at half the remaining life: long before clients (which refresh at about 5 minutes
	// left, or half-life for long tokens) would come back for a new one.
	e.refreshAt = now.Add(e.expiresOn.Sub(now) / 2)
	return e
}

func jsonString(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

// renderToken builds the IMDS JSON answer (numbers as strings, client_id included) in two
// pieces around expires_in.
func renderToken(t Token) (pre, post []byte) {
	pre = append(pre, `{"access_token":`...)
	pre = append(pre, jsonString(t.AccessToken)...)
	pre = append(pre, `,"client_id":`...)
	pre = append(pre, jsonString(t.ClientID)...)
	pre = append(pre, `,"expires_in":"`...)
	post = append(post, `","expires_on":"`...)
	post = strconv.AppendInt(post, t.ExpiresOn.Unix(), 10)
	post = append(post, `","not_before":"`...)
	post = strconv.AppendInt(post, t.NotBefore.Unix(), 10)
	post = append(post, `","refresh_token":"","resource":`...)
	post = append(post, jsonString(t.Resource)...)
	post = append(post, `,"token_type":`...)
	post = append(post, jsonString(t.TokenType)...)
	post = append(post, '}')
	return pre, post
}

// appendToken appends token i of e as JSON with expires_in as of now.
func (e *cacheEntry) appendToken(b []byte, i int, now time.Time) []byte {
	in := int64(e.tokens[i].ExpiresOn.Sub(now) / time.Second)
	if in < 0 {
		in = 0
	}
	b = append(b, e.pre[i]...)
	b = strconv.AppendInt(b, in, 10)
	return append(b, e.post[i]...)
}

// appendBody appends the token endpoint's answer: one object, or an array for several tenants.
func (e *cacheEntry) appendBody(b []byte, now time.Time) []byte {
	if len(e.tokens) == 1 {
		return e.appendToken(b, 0, now)
	}
	b = append(b, '[')
	for i := range e.tokens {
		if i > 0 {
			b = append(b, ',')
		}
		b = e.appendToken(b, i, now)
	}
	return append(b, ']')
}
