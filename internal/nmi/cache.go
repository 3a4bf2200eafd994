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
	"golang.org/x/sync/singleflight"
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
	m  map[string]*cacheEntry
	sf singleflight.Group

	oidMu sync.RWMutex
	oids  map[string]string // credentials key -> principal object ID, learned from tokens
}

// NewTokenCache returns an empty cache.
func NewTokenCache(opts CacheOptions, m *Metrics, log logr.Logger) *TokenCache {
	opts.defaults()
	return &TokenCache{opts: opts, log: log, metrics: m, m: map[string]*cacheEntry{}, oids: map[string]string{}}
}

// Lookup returns a servable entry or nil. A hit past its refresh point starts a background
// refresh, so pods that keep using a token never wait for one.
func (c *TokenCache) Lookup(key string) *cacheEntry {
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
func (c *TokenCache) Fetch(ctx context.Context, key string, fetch fetchFunc) (*cacheEntry, error) {
	c.metrics.cacheMisses.Inc()
	ch := c.sf.DoChan(key, func() (any, error) { return c.fill(key, fetch) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*cacheEntry), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *TokenCache) fill(key string, fetch fetchFunc) (*cacheEntry, error) {
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
// entry runs. On success the entry is replaced; on failure the flag is cleared so that a later
// hit tries again.
func (c *TokenCache) refreshAsync(key string, e *cacheEntry) {
	if !e.refreshing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer e.refreshing.Store(false)
		_, err, shared := c.sf.Do("refresh\x00"+key, func() (any, error) {
			_, err := c.fill(key, e.fetch)
			return nil, err
		})
		if shared {
			return
		}
		if err != nil {
			c.metrics.cacheRefreshes.WithLabelValues("error").Inc()
			c.log.V(1).Info("refreshing cached token failed; the cached one is served until it is too close to expiry", "error", err.Error())
			return
		}
		c.metrics.cacheRefreshes.WithLabelValues("ok").Inc()
	}()
}

func (c *TokenCache) evictLRULocked() {
	var oldest string
	var at int64
	for k, e := range c.m {
		if u := e.lastUsed.Load(); oldest == "" || u < at {
			oldest, at = k, u
		}
	}
	delete(c.m, oldest)
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
	var due []string
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
func (c *TokenCache) learnObjectID(credKey, oid string) {
	c.oidMu.Lock()
	if _, ok := c.oids[credKey]; ok || len(c.oids) < c.opts.MaxEntries {
		c.oids[credKey] = oid
	}
	c.oidMu.Unlock()
}

// objectID returns the principal object ID learned for a credentials key, if any.
func (c *TokenCache) objectID(credKey string) string {
	c.oidMu.RLock()
	defer c.oidMu.RUnlock()
	return c.oids[credKey]
}

// Len is the number of entries.
func (c *TokenCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// cacheKey joins the credentials key and the resource.
func cacheKey(credKey, resource string) string { return credKey + "\x00" + resource }

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
