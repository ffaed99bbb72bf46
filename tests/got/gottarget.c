/*
 * gottarget.c - libgottarget.so, the functions the GOT tests hook: each
 * caller library imports them, and the tests check which one a call reaches.
 */
int kvgot_target(int x);
int kvgot_target2(int x);

int kvgot_target(int x)
{
	return x + 1;
}

int kvgot_target2(int x)
{
	return x + 2;
}
