package hbone

// PooledConns returns how many connections of key the pool would hand out
// streams on (not counting evicted ones still draining).
func (p *Pool) PooledConns(key Key) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if kc := p.keys[key]; kc != nil {
		return len(kc.conns)
	}
	return 0
}

// OpenConns returns how many connections the pool has not closed yet.
func (p *Pool) OpenConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.all)
}
