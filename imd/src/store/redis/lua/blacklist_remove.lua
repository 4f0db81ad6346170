local n = redis.call('HDEL', KEYS[1], ARGV[2])
if n > 0 then redis.call('SPUBLISH', ARGV[1], 'changed') end
return n
