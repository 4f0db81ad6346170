-- Removes one device's push token; returns 1 when it had one.
-- KEYS[1] = push hash, KEYS[2] = push-at zset; ARGV[1] = device.
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
