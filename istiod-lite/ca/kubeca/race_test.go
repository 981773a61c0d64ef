//go:build race

package kubeca

const raceEnabled = true
